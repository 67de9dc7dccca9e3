"""pynetdicom's idle poll interval: throughput of a bare SCP on one association, and CPU used by
one open association that does nothing, for each interval (docs/performance.md, "The poll interval").

    .venv/bin/python -m bench.poll_interval
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pynetdicom import AE

from bench.common import PDU, cpu_seconds, free_port, wait_listening
from bench.ingest import BARE_SCP
from tests.support.factory import write_study


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_study(Path(tmp) / "corpus", 60, rows=512, columns=512)
        print("poll interval  bare SCP inst/s (60 x 0.5 MB)  idle CPU per open association")
        for interval in (0.001, 0.0005, 0.0002, 0.0001):
            port = free_port()
            out = Path(tmp) / f"out-{interval}"
            out.mkdir()
            command = [sys.executable, "-c", BARE_SCP, str(port), str(out), str(interval), str(PDU)]
            server = subprocess.Popen(command)
            try:
                wait_listening(port, server)
                start = time.perf_counter()
                subprocess.run(
                    ["storescu", "-aec", "BARE", "127.0.0.1", str(port), *map(str, files)],
                    env={**os.environ, "TCP_NODELAY": "1"},
                    check=True,
                    capture_output=True,
                )
                rate = len(files) / (time.perf_counter() - start)
                ae = AE()
                ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1")
                assoc = ae.associate("127.0.0.1", port, ae_title="BARE")
                before = cpu_seconds(server.pid)
                time.sleep(5)
                idle = (cpu_seconds(server.pid) - before) / 5 * 100
                assoc.release()
            finally:
                server.terminate()
                server.wait()
            print(f"{interval:<14} {rate:>28.1f}  {idle:>27.1f} %")


if __name__ == "__main__":
    main()
