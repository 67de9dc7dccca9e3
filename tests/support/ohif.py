"""OHIF 3 in Debian's Chromium, reading a real Orthanc over DICOMweb: what a radiologist sees.

`tests/viewer/` pins OHIF's built viewer (`@ohif/app`, its `dist/` served as it is) and
`playwright-core` with `package-lock.json`; `scripts/setup --dev` runs `npm ci` there. A
`ViewerServer` serves that dist and forwards `/dicom-web/` and `/wado` to Orthanc, so viewer and
DICOMweb share one origin and the browser needs no CORS; `open_in_ohif` runs
`tests/viewer/open_study.mjs` with node, which drives Chromium headless and reports what was on
screen as JSON, with screenshots.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HARNESS = Path(__file__).parents[1] / "viewer"
DIST = HARNESS / "node_modules" / "@ohif" / "app" / "dist"
APP_CONFIG = HARNESS / "app-config.js"
CHROMIUM = Path(os.environ.get("MURA_VIEWER_CHROMIUM", "/usr/bin/chromium"))
# Paths the browser asks the PACS for; everything else is the viewer.
PROXIED = ("/dicom-web/", "/wado")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer"}


def check_harness() -> None:
    """Raise with what to run when the viewer, node or Chromium is missing (tests fail, not skip)."""
    missing = []
    if (
        not (DIST / "index.html").is_file()
        or not (HARNESS / "node_modules/playwright-core").is_dir()
    ):
        missing.append(f"OHIF and playwright-core in {HARNESS}/node_modules (npm ci)")
    if shutil.which("node") is None:
        missing.append("node")
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (Debian package chromium)")
    if missing:
        raise RuntimeError(
            f"viewer test harness incomplete: {'; '.join(missing)}; run scripts/setup --dev"
        )


class ViewerServer:
    """OHIF's dist and Orthanc's DICOMweb on one loopback origin (`url`), in a thread.

    Static files come from `dist`, `/app-config.js` from `app_config`, and any other path not
    in the dist is the single-page app's `index.html` (OHIF routes like `/viewer`). Requests
    under `/dicom-web/` and `/wado` go to Orthanc with the browser's Host header, so the
    BulkDataURIs Orthanc writes point back at this origin."""

    def __init__(self, orthanc_port: int, dist: Path = DIST, app_config: Path = APP_CONFIG) -> None:
        self.orthanc_port, self.dist, self.app_config = orthanc_port, dist.resolve(), app_config
        self.requests: list[tuple[str, int]] = []  # (path, status) of proxied requests
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _static(self, path: str) -> tuple[bytes, str]:
        if path == "/app-config.js":
            return self.app_config.read_bytes(), "text/javascript"
        candidate = (self.dist / path.lstrip("/")).resolve()
        if not candidate.is_file() or self.dist not in candidate.parents:
            candidate = self.dist / "index.html"
        kind = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        return candidate.read_bytes(), kind

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path.startswith(PROXIED):
                    self._proxy()
                    return
                body, kind = server._static(path)
                self._reply(200, [("Content-Type", kind)], body)

            def _proxy(self) -> None:
                connection = http.client.HTTPConnection(
                    "127.0.0.1", server.orthanc_port, timeout=60
                )
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    connection.request("GET", self.path, headers=headers)
                    response = connection.getresponse()
                    body = response.read()
                    server.requests.append((self.path, response.status))
                    kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                    kept = [(k, v) for k, v in kept if k.lower() != "content-length"]
                    self._reply(response.status, kept, body)
                finally:
                    connection.close()

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@dataclass(frozen=True)
class Screen:
    """What `open_study.mjs` saw after opening one series of a study in OHIF.

    `text`: the page's visible text once the series is open (panels, overlays, error notices
    with their details); `overlay`: the viewport's own text; `annotation_lines`: the lines of
    text drawn over the image (an SR's first measurement); `tracked_text` and
    `measurement_rows`: the page, and the measurements panel's rows with their details, after
    tracking was accepted;
    `errors`: uncaught exceptions ("pageerror: ...") and console errors; `notes`: what the
    script did beyond the plain steps (re-rendering undrawn SR annotations); `screenshots`:
    name -> PNG path."""

    text: str
    overlay: str
    annotation_lines: list[str]
    tracked_text: str
    measurement_rows: list[str]
    thumbnails: list[dict[str, str]]
    errors: list[str]
    console: list[str]
    notes: list[str]
    screenshots: dict[str, Path]


def open_in_ohif(
    url: str,
    study_uid: str,
    series_number: int,
    out: Path,
    *,
    sr: bool = False,
    track: bool = False,
    timeout_s: float = 400,
) -> Screen:
    """Open study `study_uid` in OHIF at `url` and double-click the thumbnail of series
    `series_number` (its first one: OHIF shows a thumbnail per CR image); for an SR (`sr`), wait
    for its first measurement or a crash and, with `track`, accept tracking so the measurements
    panel lists its measurements. Screenshots go to `out`.

    Raises RuntimeError with the script's output when it cannot run that far; what OHIF shows,
    errors included, is the caller's to judge."""
    out.mkdir(parents=True, exist_ok=True)
    command = [
        "node",
        str(HARNESS / "open_study.mjs"),
        *("--url", url, "--study", study_uid, "--series", str(series_number)),
        *("--out", str(out), "--chromium", str(CHROMIUM)),
        *(["--sr"] if sr else []),
        *(["--track"] if track else []),
    ]
    env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=HARNESS
    )
    report = out / "screen.json"
    if done.returncode != 0 or not report.is_file():
        raise RuntimeError(f"open_study.mjs failed ({done.returncode}): {done.stderr[-4000:]}")
    data = json.loads(report.read_text())
    return Screen(
        text=data["text"],
        overlay=data["overlay"],
        annotation_lines=data["annotationLines"],
        tracked_text=data["trackedText"],
        measurement_rows=data["measurementRows"],
        thumbnails=data["thumbnails"],
        errors=data["errors"],
        console=data["console"],
        notes=data["notes"],
        screenshots={name: out / file for name, file in data["screenshots"].items()},
    )


def keep_screenshots(screen: Screen, name: str) -> None:
    """Copy the screenshots to $MURA_VIEWER_SCREENSHOTS/name-*.png when that is set."""
    target = os.environ.get("MURA_VIEWER_SCREENSHOTS")
    if not target:
        return
    Path(target).mkdir(parents=True, exist_ok=True)
    for shot, path in screen.screenshots.items():
        shutil.copyfile(path, Path(target) / f"{name}-{shot}.png")
