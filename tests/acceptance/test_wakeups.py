"""A study completes at its due time, and `serve` wakes its worker and dispatcher, with every
periodic tick and poll set far longer than the tests wait (node/complete/scheduler.py
`due_in`, node/wakeup.py).

Real `serve` processes (SCP, scheduler, worker and dispatcher processes), storescu as the
modality, a pynetdicom storage SCP as the PACS.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support import destination as dest
from tests.support.factory import storescu, write_study
from tests.support.serve import Serve, wait_for

pytestmark = pytest.mark.slow

NEVER_S = 3600.0  # a tick or poll interval that no test here waits for


def serve_with(tmp_path: Path, completion: str, children: str = "[worker]\nprocesses = 0") -> Serve:
    """`serve` whose periodic completion tick is an hour apart, with ``completion`` settings."""
    serve = Serve(tmp_path)
    text = (
        serve.config.read_text()
        .replace("quiet_period_s = 3.0\n", completion)
        .replace("tick_interval_s = 0.2", f"tick_interval_s = {NEVER_S}")
        .replace("[worker]\nprocesses = 0", children)
    )
    serve.config.write_text(text)
    return serve


def study_state(serve: Serve, uid: str) -> str | None:
    for study in serve.status()["recent_studies"]:
        if study["study_instance_uid"] == uid:
            return str(study["state"])
    return None


def send(serve: Serve, tmp_path: Path, name: str) -> str:
    files = write_study(tmp_path / name, 2, body_part="WRIST", rows=64, columns=64)
    assert storescu(serve.port, files).returncode == 0
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_a_study_completes_its_quiet_period_after_its_last_image_not_at_the_next_tick(
    tmp_path: Path,
) -> None:
    serve = serve_with(tmp_path, "quiet_period_s = 1.0\n")
    serve.start()
    try:
        uid = send(serve, tmp_path, "study")
        wait_for(lambda: study_state(serve, uid) == "READY", timeout=60, what="READY")
        shown = serve.command("studies", "show", uid, "--json")
        assert shown.returncode == 0, shown.stderr
        events = [event["event"] for event in json.loads(shown.stdout)["history"]]
        # Nothing was in flight when the quiet period ended: the hold set while the images
        # arrived has lapsed by then (node/receive/holds.py hold_lease_s).
        assert "held" not in events, events
    finally:
        serve.stop()


def test_a_release_trigger_study_completes_its_settle_time_after_the_release(
    tmp_path: Path,
) -> None:
    serve = serve_with(
        tmp_path,
        # (the quiet period: as long as the force timeout of Serve's configuration allows)
        'quiet_period_s = 600.0\nrelease_trigger_aes = ["MODALITY"]\nrelease_settle_s = 1.0\n',
    )
    serve.start()
    try:
        uid = send(serve, tmp_path, "forwarded")
        wait_for(lambda: study_state(serve, uid) == "READY", timeout=60, what="READY")
    finally:
        serve.stop()


def test_the_worker_and_the_dispatcher_are_woken_for_a_ready_study(tmp_path: Path) -> None:
    pacs = dest.Destination()
    pacs.start()
    serve = serve_with(
        tmp_path,
        "quiet_period_s = 1.0\n",
        children=f"[worker]\nprocesses = 1\npoll_interval_s = {NEVER_S}\n"
        f"[dispatch]\npoll_interval_s = {NEVER_S}\n[model]\nallow_untrained = true\n"
        f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
        f"port = {pacs.port}\n",
    )
    serve.start()
    try:
        first = send(serve, tmp_path, "first")
        wait_for(lambda: pacs.reports(first), timeout=240, what="the first study's SR")
        # A second study, once both processes are waiting again.
        second = send(serve, tmp_path, "second")
        wait_for(lambda: pacs.reports(second), timeout=120, what="the second study's SR")
        # The SR is received before the study's other results: DONE comes after the last one.
        wait_for(lambda: study_state(serve, second) == "DONE", timeout=60, what="DONE")
    finally:
        code, output = serve.stop()
        pacs.stop()
    assert code == 0, output
