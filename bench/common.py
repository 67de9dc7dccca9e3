"""What the benchmarks share: the repository's root, the PDU size the receivers negotiate,
waiting for a receiver in a subprocess to listen on loopback, and a process's CPU time and
children from /proc.

Every benchmark runs as a module from the repository's root (``python -m bench.<name>``), so
``bench`` and ``tests.support`` (the synthetic DICOM factory, the Orthanc harness) import as
packages.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PDU = 262144  # bytes: the maximum PDU size every receiver and sender in the benchmarks uses


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Return once ``port`` on 127.0.0.1 accepts a TCP connection.

    Raises RuntimeError when ``process`` exits first or nothing listens within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"receiver exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("receiver did not start listening")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc/PID/stat); 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """The child processes of ``pid`` (/proc/PID/task/PID/children; empty when it is gone)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in path.read_text().split()]
    except OSError:
        return []
