"""Acceptance: the `mura-node` command as a subprocess, with dcmtk and pynetdicom as peers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE

from tests.support.factory import (
    CR,
    PATIENT_ID,
    PATIENT_NAME,
    free_port,
    make_radiograph,
    storescu,
    write,
    write_study,
)
from tests.support.serve import Serve, accepting, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    node = Serve(tmp_path)
    yield node
    if node.process is not None:
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.communicate()


def test_serve_queue_status_and_restart(serve: Serve, tmp_path: Path) -> None:
    serve.start()
    files = write_study(tmp_path / "study", 3, body_part="WRIST")
    result = storescu(serve.port, files)
    assert result.returncode == 0, result.stderr

    def ready() -> dict[str, Any] | None:
        report = serve.status()
        return report if report["studies_by_state"]["READY"] == 1 else None

    report = wait_for(ready, what="the study to become READY")
    [study] = report["recent_studies"]
    assert (study["study_type"], study["images"], study["state"]) == ("wrist", 3, "READY")
    assert report["instances"] == {"stored": 3, "ignored": 0}
    assert report["oldest_waiting"]["state"] == "READY"
    assert report["model_untrained"] is False  # no model is configured: none runs
    assert study["reopened_at"] is None

    filtered = serve.command("status", "--json", "--state", "failed")
    assert json.loads(filtered.stdout)["recent_studies"] == []
    by_uid = serve.command("status", "--json", "--study", study["study_instance_uid"][-8:])
    assert [s["study"] for s in json.loads(by_uid.stdout)["recent_studies"]] == [study["study"]]

    text = serve.command("status")
    assert text.returncode == 0
    assert "READY" in text.stdout and "wrist" in text.stdout and study["study"] in text.stdout
    for secret in (PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_ID):
        assert secret not in text.stdout
        assert secret not in json.dumps(report)

    code, output = serve.stop(signal.SIGTERM)
    assert code == 0, output
    assert "Traceback" not in output
    assert PATIENT_ID not in output and PATIENT_NAME.split("^")[0] not in output

    # The queue survives a restart, and a late image re-opens the study.
    serve.start()
    assert serve.status()["studies_by_state"]["READY"] == 1
    late = write(
        make_radiograph(study_uid=study["study_instance_uid"], body_part="WRIST", seed=9),
        tmp_path / "late.dcm",
    )
    assert storescu(serve.port, [late]).returncode == 0
    reopened = serve.status()["recent_studies"][0]
    assert (reopened["state"], reopened["generation"], reopened["images"]) == ("RECEIVING", 2, 4)
    assert reopened["first_received_at"] == study["first_received_at"]
    assert reopened["reopened_at"] == reopened["opened_at"] >= study["opened_at"]
    wait_for(ready, what="the re-opened study to become READY again")
    code, output = serve.stop(signal.SIGINT)
    assert code == 0, output
    retried = serve.command("retry")
    assert (retried.returncode, retried.stdout) == (0, "re-queued 0 dead-lettered deliveries\n")
    assert "Deliveries: 0 pending" in serve.command("status").stdout


def test_shutdown_lets_an_open_association_finish(serve: Serve, tmp_path: Path) -> None:
    serve.start()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CR)
    assoc = ae.associate("127.0.0.1", serve.port, ae_title="MURA_NODE")
    assert assoc.is_established
    assert serve.process is not None
    serve.process.send_signal(signal.SIGTERM)
    wait_for(lambda: not accepting(serve.port), what="serve to stop accepting")
    status = assoc.send_c_store(make_radiograph(body_part="ELBOW"))
    assert status.Status == 0x0000
    assoc.release()
    output, _ = serve.process.communicate(timeout=60)
    assert serve.process.returncode == 0, output
    assert "aborted" not in output
    serve.process = None
    assert serve.status()["instances"]["stored"] == 1


def test_status_without_a_database(serve: Serve) -> None:
    result = serve.command("status")
    assert result.returncode == 1
    assert result.stderr.startswith("mura-node: no database at ")
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_error(serve: Serve) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", serve.port))
        blocker.listen()
        result = serve.command("serve")
    assert result.returncode == 1
    assert (
        f"mura-node: cannot listen on 127.0.0.1:{serve.port}: Address already in use"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_a_clear_error(serve: Serve) -> None:
    port = free_port()  # nothing listens there
    with serve.config.open("a") as config:
        config.write(f'[database]\nurl = "postgresql://mura:secret@127.0.0.1:{port}/mura"\n')
    result = serve.command("serve")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"mura-node: cannot prepare database postgresql://mura:***@127.0.0.1:{port}/mura"
    )
    assert "secret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_json_logs_and_levels_per_logger(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MURA_NODE_SERVICE__LOG_FORMAT": "json",
        "MURA_NODE_MODEL__ALLOW_UNTRAINED": "true",
    }
    result = subprocess.run(
        [sys.executable, "-m", "node", "model", "info"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    [line] = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert (line["level"], line["logger"]) == ("WARNING", "node.inference.engine")
    assert "UNTRAINED" in line["message"]
    quiet = subprocess.run(
        [sys.executable, "-m", "node", "model", "info"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "MURA_NODE_SERVICE__LOG_LEVELS": '{"node.inference.engine" = "ERROR"}'},
    )
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_metrics_and_health_endpoints(serve: Serve, tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    metrics_port = free_port()
    text = serve.config.read_text().replace("processes = 0", "processes = 1")
    serve.config.write_text(
        text
        + f"[model]\nallow_untrained = true\n[metrics]\nenabled = true\nport = {metrics_port}\n"
    )
    serve.start()

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{metrics_port}{path}", timeout=5
            ) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    assert get("/healthz") == (200, "ok\n")
    assert (
        storescu(serve.port, write_study(tmp_path / "study", 2, body_part="ELBOW")).returncode == 0
    )
    wait_for(
        lambda: serve.status()["studies_by_state"]["DONE"] == 1, what="the study to be processed"
    )

    def scraped() -> str | None:
        status, body = get("/metrics")
        return (
            body
            if status == 200 and "mura_node_inference_seconds_per_image_count 2.0" in body
            else None
        )

    body = wait_for(scraped, what="the worker's metrics")
    assert 'mura_node_instances_received_total{outcome="stored"} 2.0' in body
    assert 'mura_node_studies{state="DONE"} 1.0' in body
    assert "mura_node_model_untrained 1.0" in body
    assert serve.status()["model_untrained"] is True
    assert serve.command("status").stdout.splitlines()[1].startswith("MODEL UNTRAINED: ")
    assert "mura_node_queue_wait_seconds_count 1.0" in body
    code, output = serve.stop()
    assert code == 0, output


def test_sigterm_to_the_whole_process_group_stops_cleanly(serve: Serve) -> None:
    """systemd (KillMode=control-group) and Ctrl-C signal the worker and dispatcher too."""
    serve.config.write_text(
        serve.config.read_text().replace("processes = 0", "processes = 1\npoll_interval_s = 0.05")
        + "[model]\nallow_untrained = true\n[dispatch]\npoll_interval_s = 0.05\n"
    )
    serve.start()
    assert serve.process is not None
    time.sleep(3)  # the children are up and waiting for work
    os.killpg(serve.process.pid, signal.SIGTERM)
    output, _ = serve.process.communicate(timeout=60)
    assert serve.process.returncode == 0, output
    assert "stopped" in output
    serve.process = None


def test_separate_worker_command_processes_and_stops_on_sigterm(
    serve: Serve, tmp_path: Path
) -> None:
    """`mura-node worker`, as on another machine: it shares only the database and the files."""
    serve.config.write_text(serve.config.read_text() + "[model]\nallow_untrained = true\n")
    serve.start()
    worker = subprocess.Popen(
        [sys.executable, "-m", "node", "worker", "--config", str(serve.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        files = write_study(tmp_path / "study", 2, body_part="SHOULDER", rows=64, columns=64)
        assert storescu(serve.port, files).returncode == 0
        wait_for(
            lambda: serve.status()["studies_by_state"]["DONE"] == 1,
            timeout=120,
            what="the separate worker to process the study",
        )
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, output
        assert "UNTRAINED" in output and "Traceback" not in output
        started = f"inference worker {worker.pid} started: UNTRAINED model on cpu, "
        assert started in output and " thread(s) (fp32)" in output
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.communicate()
    code, output = serve.stop()
    assert code == 0, output


def _process_titles(parent: int) -> set[str]:
    """The command lines (as `ps` shows them) of ``parent``'s child processes."""
    titles = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent:
                cmdline = (stat.parent / "cmdline").read_bytes()
                titles.add(cmdline.replace(b"\0", b" ").decode().strip())
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
    return titles


def test_serve_children_have_process_titles(serve: Serve) -> None:
    serve.config.write_text(
        serve.config.read_text().replace("processes = 0", "processes = 1")
        + "[model]\nallow_untrained = true\n"
    )
    serve.start()
    assert serve.process is not None
    expected = {"mura-node worker 1", "mura-node dispatcher 1"}
    wait_for(
        lambda: _process_titles(serve.process.pid) >= expected,  # type: ignore[union-attr]
        what=f"child processes titled {sorted(expected)}",
    )
    code, output = serve.stop()
    assert code == 0, output


def test_status_watch_refreshes_until_interrupted(serve: Serve, tmp_path: Path) -> None:
    # the study must still be RECEIVING in every report, however slowly `status` starts
    serve.config.write_text(
        serve.config.read_text().replace("quiet_period_s = 3.0", "quiet_period_s = 600.0")
    )
    serve.start()
    assert storescu(serve.port, write_study(tmp_path / "study", 1)).returncode == 0
    command = [sys.executable, "-m", "node", "status", "--config", str(serve.config)]
    watch = subprocess.Popen(
        [*command, "--watch", "0.6", "--json"], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    assert watch.stdout is not None
    # one JSON line each time; three span more than a second (the report has whole seconds)
    reports = [json.loads(watch.stdout.readline()) for _ in range(3)]
    watch.send_signal(signal.SIGINT)
    watch.communicate(timeout=30)
    assert watch.returncode == 0
    assert all(r["studies_by_state"]["RECEIVING"] == 1 for r in reports)
    assert reports[0]["generated_at"] < reports[2]["generated_at"]
    refused = subprocess.run([*command, "--watch", "0"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--watch" in refused.stderr
    code, output = serve.stop()
    assert code == 0, output


def test_worker_refuses_a_database_without_the_schema(serve: Serve) -> None:
    serve.config.write_text(serve.config.read_text() + "[model]\nallow_untrained = true\n")
    result = serve.command("worker")
    assert result.returncode == 1
    assert "has no mura-node schema yet" in result.stderr and "Traceback" not in result.stderr


def test_db_upgrade_says_what_it_did_and_watch_in_a_pipe_does_not_wrap(
    serve: Serve, tmp_path: Path
) -> None:
    from sqlalchemy.orm import Session

    from node.db import Study, head_revision, make_engine

    created = serve.command("db", "upgrade")
    assert created.stdout == f"created the database schema at revision {head_revision()}\n"
    again = serve.command("db", "upgrade")
    assert again.stdout == f"the database schema is already at revision {head_revision()}\n"
    url = json.loads(serve.command("config", "show").stdout)["database"]["effective_url"]
    reason = "input fault: " + " ".join(["image 1 of 1 is abnormally dark"] * 6)
    engine = make_engine(url)
    with Session(engine) as session, session.begin():
        now = datetime.now(UTC)
        session.add(
            Study(
                study_instance_uid="1.2.826.0.1.3680043.8.498.1",
                state="FAILED",
                reason=reason,
                generation=1,
                first_received_at=now,
                opened_at=now,
                last_received_at=now,
                state_changed_at=now,
            )
        )
    engine.dispose()
    assert [line for line in serve.command("status").stdout.splitlines() if reason in line]
    watching = subprocess.Popen(
        [sys.executable, "-m", "node", "status", "--watch", "0.5", "--config", str(serve.config)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert watching.stdout is not None
    lines = []
    for line in watching.stdout:  # a pipe: no terminal, no COLUMNS
        lines.append(line)
        if line.startswith("Refused C-STOREs"):  # the end of one report
            break
    watching.send_signal(signal.SIGINT)
    watching.communicate(timeout=60)
    assert watching.returncode == 0
    assert lines[0].startswith("mura-node status at ")
    assert len([line for line in lines if reason in line]) == 2  # recent and failed, whole
