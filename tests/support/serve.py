"""`mura-node serve` in a subprocess with its own configuration file, and waiting for what it
does: for the acceptance tests that drive the node from outside."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.factory import free_port


def wait_for(
    condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition", poll: float = 0.1
) -> Any:
    """The first true value of ``condition()``, polled every ``poll`` s; AssertionError naming
    ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"gave up waiting for {what}")


def accepting(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Serve:
    """`mura-node serve` in a subprocess with its own configuration file."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.config = tmp_path / "mura-node.toml"
        self.config.write_text(
            f"""
[dicom]
host = "127.0.0.1"
port = {self.port}
[storage]
data_dir = "{tmp_path / "data"}"
[completion]
quiet_period_s = 3.0
force_complete_s = 600.0
tick_interval_s = 0.2
[service]
grace_period_s = 20.0
[worker]
processes = 0
"""
        )
        self.cwd = tmp_path
        self.process: subprocess.Popen[str] | None = None

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "node", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            cwd=self.cwd,
            timeout=120,
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its worker and dispatcher processes share its group
        )
        wait_for(
            lambda: accepting(self.port) or self.process.poll() is not None, what="serve to listen"
        )  # type: ignore[union-attr]
        assert self.process.poll() is None, self.process.communicate()[0]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        assert self.process is not None
        self.process.send_signal(sig)
        output, _ = self.process.communicate(timeout=60)
        code = self.process.returncode
        self.process = None
        return code, output

    def status(self) -> dict[str, Any]:
        result = self.command("status", "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))
