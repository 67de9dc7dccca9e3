"""A real Orthanc PACS on loopback ports, for end-to-end tests and benchmarks.

Plugins (Debian ships them as shared libraries, e.g. `orthanc-dicomweb`) are loaded by name:
`Orthanc(directory, plugins=("OrthancDicomWeb",))` serves DICOMweb under `/dicom-web/`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.factory import free_port

# Where Debian's and Orthanc's own packages put plugins (libNAME.so, perhaps versioned).
PLUGIN_DIRECTORIES = (
    Path("/usr/share/orthanc/plugins"),
    Path("/usr/lib/orthanc"),
    Path("/usr/local/share/orthanc/plugins"),
)
# A plugin's default settings for the tests: DICOMweb at /dicom-web/ as viewers expect it.
PLUGIN_SETTINGS: dict[str, dict[str, Any]] = {
    "OrthancDicomWeb": {"DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}},
}


def plugin_path(name: str) -> Path:
    """The shared library of the Orthanc plugin `name` (e.g. "OrthancDicomWeb").

    Raises FileNotFoundError naming the Debian package to install when it is missing: a test
    that needs a plugin fails, it does not skip."""
    for directory in PLUGIN_DIRECTORIES:
        for candidate in sorted(directory.glob(f"lib{name}.so*")):
            return candidate
    package = {"OrthancDicomWeb": "orthanc-dicomweb"}.get(name, "orthanc")
    raise FileNotFoundError(
        f"Orthanc plugin {name} not found in {', '.join(map(str, PLUGIN_DIRECTORIES))}: "
        f"install the Debian package {package} (scripts/setup --dev does)"
    )


class Orthanc:
    def __init__(
        self,
        directory: Path,
        ae_title: str = "ORTHANC",
        extra: dict[str, Any] | None = None,
        plugins: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "mura-node-test",
                    "StorageDirectory": str(directory / "storage"),
                    "IndexDirectory": str(directory / "index"),
                    "HttpPort": self.http_port,
                    "DicomPort": self.dicom_port,
                    "DicomAet": ae_title,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomCheckCalledAet": True,
                    "Plugins": [str(plugin_path(name)) for name in plugins],
                    "HttpServerEnabled": True,
                    "StableAge": 60,
                    **{k: v for name in plugins for k, v in PLUGIN_SETTINGS.get(name, {}).items()},
                    **(extra or {}),
                }
            )
        )

    def start(self) -> None:
        log = (self.directory / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            ["Orthanc", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"Orthanc exited: {(self.directory / 'orthanc.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)
            self.process = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.http_port}{path}", timeout=10
        ) as response:
            return json.loads(response.read())

    def delete(self, path: str) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", method="DELETE"
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def instances(self) -> list[dict[str, Any]]:
        return [self.get(f"/instances/{i}/simplified-tags") for i in self.get("/instances")]

    def file(self, instance_id: str) -> bytes:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.http_port}/instances/{instance_id}/file", timeout=10
        ) as r:
            return bytes(r.read())
