"""Crash safety: dead workers, a node killed with SIGKILL during a burst, poison studies."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from node.config import Destination, ModelConfig
from node.db import Result, Study, StudyEvent
from node.operate.service import Node
from tests.support import destination as dest
from tests.support.factory import CR, storescu, write_study
from tests.support.nodes import FakeClock, node_config
from tests.support.serve import Serve, wait_for


def study_row(node: Node, uid: str) -> Study:
    with Session(node.engine) as session:
        return session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()


def events(node: Node, uid: str) -> list[tuple[str, str | None]]:
    with Session(node.engine) as session:
        rows = session.execute(
            select(StudyEvent.event, StudyEvent.detail)
            .join(Study)
            .where(Study.study_instance_uid == uid)
            .order_by(StudyEvent.id)
        ).all()
    return [(r.event, r.detail) for r in rows]


def ready_study(node: Node, clock: FakeClock, tmp_path: Path) -> str:
    files = write_study(tmp_path / "study", 1, body_part="WRIST")
    assert storescu(node.scp.port, files).returncode == 0
    clock.advance(3600)
    node.scheduler.tick()
    return str(dcmread(files[0]).StudyInstanceUID)


def test_a_study_that_kills_its_workers_ends_failed(
    make_node: Callable[..., Node], tmp_path: Path, database_url: str
) -> None:
    clock = FakeClock()
    node = make_node(clock=clock, worker={"max_crashes": 3}, database={"url": database_url})
    uid = ready_study(node, clock, tmp_path)
    for attempt in (1, 2, 3):
        worker_id = f"host-a:{1000 + attempt}:1"
        claimed = node.work_queue.claim_ready_study(worker_id, timedelta(seconds=60))
        assert claimed is not None and claimed.study_instance_uid == uid
        released = node.work_queue.reclaim_dead_worker(f"host-a:{1000 + attempt}:", "was killed")
        assert released == 1
        assert study_row(node, uid).state == ("FAILED" if attempt == 3 else "READY")
    study = study_row(node, uid)
    assert study.reason is not None and "stopped 3 times" in study.reason
    assert [e for e, _ in events(node, uid)].count("reclaimed") == 3


def test_heartbeat_keeps_a_claim_and_a_silent_worker_loses_it(
    make_node: Callable[..., Node], tmp_path: Path, database_url: str
) -> None:
    """A worker on another machine: only the shared database tells whether it is alive."""
    clock = FakeClock()
    node = make_node(clock=clock, database={"url": database_url})
    uid = ready_study(node, clock, tmp_path)
    lease = timedelta(seconds=60)
    assert node.work_queue.claim_ready_study("host-a:1:1", lease) is not None
    for _ in range(5):  # alive: it renews every lease / 4
        clock.advance(15)
        assert node.work_queue.renew_leases("host-a:1:1", lease) == 1
        assert node.work_queue.reclaim_expired() == 0
    assert study_row(node, uid).state == "PROCESSING"
    clock.advance(61)  # silent for a whole lease: another worker may take it
    assert node.work_queue.reclaim_expired() == 1
    assert study_row(node, uid).state == "READY"
    assert node.work_queue.renew_leases("host-a:1:1", lease) == 0  # the old worker lost it


def test_crashes_are_a_counter_that_a_reopened_study_keeps(
    make_node: Callable[..., Node], tmp_path: Path, database_url: str
) -> None:
    """Each reclaim adds one to studies.crashes; a late image re-opens the study but does not
    reset the count (max_crashes counts over the study's whole life, as it always has)."""
    clock = FakeClock()
    node = make_node(clock=clock, worker={"max_crashes": 3}, database={"url": database_url})
    files = write_study(tmp_path / "study", 2, body_part="WRIST")
    assert storescu(node.scp.port, files[:1]).returncode == 0
    clock.advance(3600)
    node.scheduler.tick()
    uid = str(dcmread(files[0]).StudyInstanceUID)
    lease = timedelta(seconds=60)
    for expected in (1, 2):
        assert node.work_queue.claim_ready_study(f"host-a:{expected}:1", lease) is not None
        clock.advance(61)
        assert node.work_queue.reclaim_expired() == 1
        assert (study_row(node, uid).state, study_row(node, uid).crashes) == ("READY", expected)
    assert storescu(node.scp.port, files[1:]).returncode == 0  # a late image: generation 2
    reopened = study_row(node, uid)
    assert (reopened.state, reopened.generation, reopened.crashes) == ("RECEIVING", 2, 2)
    clock.advance(3600)
    node.scheduler.tick()
    assert node.work_queue.claim_ready_study("host-a:3:1", lease) is not None
    assert node.work_queue.reclaim_dead_worker("host-a:3:", "was killed") == 1
    failed = study_row(node, uid)
    assert (failed.state, failed.crashes) == ("FAILED", 3)
    assert failed.reason is not None and "stopped 3 times" in failed.reason


def test_max_crashes_reads_the_counter_not_the_events(
    make_node: Callable[..., Node], tmp_path: Path, database_url: str
) -> None:
    clock = FakeClock()
    node = make_node(clock=clock, worker={"max_crashes": 5}, database={"url": database_url})
    uid = ready_study(node, clock, tmp_path)
    with Session(node.engine) as session, session.begin():
        session.execute(update(Study).where(Study.study_instance_uid == uid).values(crashes=4))
    assert node.work_queue.claim_ready_study("host-a:1:1", timedelta(seconds=60)) is not None
    assert node.work_queue.reclaim_dead_worker("host-a:1:", "was killed") == 1
    study = study_row(node, uid)
    assert (study.state, study.crashes) == ("FAILED", 5)
    assert [e for e, _ in events(node, uid)].count("reclaimed") == 1


def test_a_worker_returns_the_study_of_a_silent_worker_and_processes_it(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """Reclaiming expired leases is the workers' job (their heartbeat), not the scheduler's."""
    from node.inference.engine import InferenceEngine
    from node.work.worker import build_worker

    clock = FakeClock()
    node = make_node(clock=clock, worker={"lease_s": 0.4, "poll_interval_s": 0.05})
    uid = ready_study(node, clock, tmp_path)
    assert node.work_queue.claim_ready_study("host-b:1:1", timedelta(seconds=60)) is not None
    clock.advance(61)  # host-b went silent
    node.scheduler.tick()
    assert study_row(node, uid).state == "PROCESSING"  # the completion tick leaves it alone
    inference = InferenceEngine.from_config(ModelConfig(allow_untrained=True))
    worker = build_worker(node.config, inference, clock)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: study_row(node, uid).state == "DONE", what="the study to be done")
    finally:
        stop.set()
        thread.join()
        worker.close()
    assert [e for e, _ in events(node, uid)] == [
        "opened",
        "ready",
        "claimed",
        "reclaimed",
        "claimed",
        "results",
    ]
    assert study_row(node, uid).crashes == 1


def echo(port: int) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="MURA_NODE")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


@pytest.mark.slow
def test_worker_killed_by_a_crash_is_restarted_and_its_study_done_once(tmp_path: Path) -> None:
    pacs = dest.Destination()
    pacs.start()
    config = node_config(
        tmp_path,
        completion={"quiet_period_s": 0.5, "tick_interval_s": 0.2},
        worker={"processes": 1, "poll_interval_s": 0.05},
        model={"allow_untrained": True},
        dispatch={"poll_interval_s": 0.2},
    )
    config = replace(
        config,
        destinations=(Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port),),
    )
    node = Node(config)
    node.start()
    try:
        files = write_study(tmp_path / "big", 12, body_part="HAND", rows=256, columns=256)
        uid = str(dcmread(files[0]).StudyInstanceUID)
        assert storescu(node.scp.port, files).returncode == 0

        def processing_by() -> str | None:
            study = study_row(node, uid)
            return study.claimed_by if study.state == "PROCESSING" else None

        claimed_by = wait_for(processing_by, timeout=120, what="the worker to take the study")
        pid = int(claimed_by.split(":")[1])
        os.kill(pid, signal.SIGSEGV)  # as a native decoder crash would
        wait_for(lambda: not node.children[0].is_alive(), what="the worker to die")
        assert echo(node.scp.port)  # the SCP, in another process, does not notice
        other = write_study(tmp_path / "other", 1, body_part="HAND")
        assert storescu(node.scp.port, other).returncode == 0

        def settled() -> bool:
            node.supervise()  # what `serve` does every second
            return {
                study_row(node, uid).state,
                study_row(node, str(dcmread(other[0]).StudyInstanceUID)).state,
            } == {"DONE"}

        wait_for(settled, timeout=180, what="both studies to be done after the restart")
        assert node.children[0].pid != pid
        assert ("reclaimed", "worker process was killed by SIGSEGV") in events(node, uid)
        with Session(node.engine) as session:
            kinds = sorted(
                session.scalars(
                    select(Result.kind).join(Study).where(Study.study_instance_uid == uid)
                )
            )
        # One result set: nothing of the killed attempt.
        assert kinds == ["sc"] * 12 + ["sr", "summary"]
        # Secondary Captures: 12 heatmaps and the summary image.
        assert len(pacs.reports(uid)) == 1 and len(pacs.heatmaps(uid)) == 13
    finally:
        node.stop()
        pacs.stop()


def serve_with_worker_and_destination(
    tmp_path: Path,
    pacs: dest.Destination,
    quiet_period_s: float,
    worker: str = "",
    dispatch: str = "",
) -> Serve:
    """`serve` with one untrained worker and ``pacs`` as its destination."""
    serve = Serve(tmp_path)
    serve.config.write_text(
        serve.config.read_text()
        .replace("quiet_period_s = 3.0", f"quiet_period_s = {quiet_period_s}")
        .replace("processes = 0", f"processes = 1\npoll_interval_s = 0.2\n{worker}")
        + f"""
[model]
allow_untrained = true
[dispatch]
poll_interval_s = 0.2
{dispatch}
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs.port}
"""
    )
    return serve


def send_study(port: int, files: list[Path], acked: set[str]) -> bool:
    """One association per study; the SOP Instance UIDs the node acknowledged go to ``acked``."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CR, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="MURA_NODE")
    except Exception:
        return False
    if not assoc.is_established:
        return False
    complete = True
    try:
        for path in files:
            ds = dcmread(path)
            try:
                status = assoc.send_c_store(ds)
            except Exception:
                return False
            if "Status" in status and int(status.Status) == 0:
                acked.add(str(ds.SOPInstanceUID))
            else:
                complete = False
    finally:
        if assoc.is_established:
            assoc.release()
    return complete


@pytest.mark.slow
def test_sigkill_during_a_burst_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    pacs = dest.Destination()
    pacs.start()
    serve = serve_with_worker_and_destination(
        tmp_path,
        pacs,
        quiet_period_s=10.0,
        worker="lease_s = 3.0",
        dispatch="timeout_s = 2.0\nfirst_retry_s = 0.5",
    )
    studies = [
        write_study(tmp_path / f"s{i}", 2, body_part="WRIST", rows=96, columns=96) for i in range(8)
    ]
    uids = [str(dcmread(files[0]).StudyInstanceUID) for files in studies]
    acked: set[str] = set()
    done_sending = threading.Event()

    def sender() -> None:
        for files in studies:
            while not send_study(serve.port, files, acked):
                time.sleep(0.3)  # the node is down: try again, as a modality does
            time.sleep(1.0)
        done_sending.set()

    database = tmp_path / "data" / "mura-node.db"

    def states() -> set[str]:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as connection:
            return {row[0] for row in connection.execute("SELECT DISTINCT state FROM studies")}

    def kill() -> None:
        assert serve.process is not None
        os.killpg(serve.process.pid, signal.SIGKILL)  # the node and its children, at once
        serve.process.communicate()
        serve.process = None
        at_kill.append(states())  # the queue as the killed node left it
        serve.start()

    at_kill: list[set[str]] = []
    serve.start()
    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        # While studies arrive, while a worker holds one, while results are being delivered,
        # and once at a moment chosen at random.
        wait_for(lambda: len(acked) >= 3, what="some instances to be stored")
        kill()
        for state in ("PROCESSING", "DISPATCHING"):
            wait_for(lambda s=state: s in states(), timeout=120, poll=0.005, what=state)
            kill()
        time.sleep(random.Random(20261126).uniform(0.0, 5.0))
        kill()
        assert done_sending.wait(120), "the sender could not deliver every study"
        assert len(acked) == 16

        def all_delivered() -> bool:
            report = serve.status()
            return report["studies_by_state"].get("DONE", 0) == 8

        wait_for(all_delivered, timeout=240, what="every study to be processed and delivered")
        code, output = serve.stop()
        assert code == 0, output
    finally:
        if serve.process is not None:
            os.killpg(serve.process.pid, signal.SIGKILL)
            serve.process.communicate()
        pacs.stop()
    assert len(at_kill) == 4
    assert "RECEIVING" in at_kill[0]
    assert "PROCESSING" in at_kill[1]
    assert "DISPATCHING" in at_kill[2]
    for uid in uids:
        assert len(pacs.reports(uid)) == 1, f"study {uid}: {pacs.reports(uid)}"
        # Secondary Captures: 2 heatmaps and the summary image.
        assert len(pacs.heatmaps(uid)) == 3, f"study {uid}: {pacs.heatmaps(uid)}"
    assert set(pacs.received) == set(uids)


@pytest.mark.slow
def test_graceful_shutdown_under_load_loses_nothing(tmp_path: Path) -> None:
    from tests.support.factory import PATIENT_ID, PATIENT_NAME

    pacs = dest.Destination()
    pacs.start()
    serve = serve_with_worker_and_destination(tmp_path, pacs, quiet_period_s=1.0)
    acked: set[str] = set()
    stop_sending = threading.Event()

    def sender(index: int) -> None:
        for number in range(6):
            if stop_sending.wait(0.3):
                return
            files = write_study(tmp_path / f"sender{index}-{number}", 2, body_part="ELBOW")
            send_study(serve.port, files, acked)

    serve.start()
    senders = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(4)]
    try:
        # A first study, processed and delivered: the worker has its model loaded.
        first = write_study(tmp_path / "first", 2, body_part="ELBOW")
        assert send_study(serve.port, first, acked)
        wait_for(lambda: pacs.stores > 0, timeout=180, what="the first results to be delivered")
        for thread in senders:
            thread.start()
        wait_for(lambda: len(acked) >= 10, what="a load of instances")
        assert all(thread.is_alive() for thread in senders)  # still sending
        assert serve.process is not None
        serve.process.send_signal(signal.SIGTERM)  # while senders keep sending
        output, _ = serve.process.communicate(timeout=60)  # grace period is 20 s
        assert serve.process.returncode == 0, output
        serve.process = None
        stop_sending.set()
        for thread in senders:
            thread.join(30)
        assert "Traceback" not in output
        for secret in (PATIENT_NAME, PATIENT_NAME.split("^")[0], PATIENT_ID):
            assert secret not in output  # no patient data in the INFO log of any process
        # Everything acknowledged before the stop is there; after a restart all of it is
        # processed and delivered once.
        assert serve.status()["instances"]["stored"] == len(acked)
        serve.start()

        def all_done() -> bool:
            report = serve.status()["studies_by_state"]
            return report.get("DONE", 0) > 0 and set(report) <= {"DONE"} | {
                k for k, v in report.items() if v == 0
            }

        wait_for(all_done, timeout=300, what="every study to be done after the restart")
        code, output = serve.stop()
        assert code == 0, output
    finally:
        stop_sending.set()
        if serve.process is not None:
            os.killpg(serve.process.pid, signal.SIGKILL)
            serve.process.communicate()
        pacs.stop()
    studies = {uid for uid in pacs.received}
    assert all(len(pacs.reports(uid)) == 1 for uid in studies)
    # A heatmap per image and a summary per study (all Secondary Captures).
    assert sum(len(pacs.heatmaps(uid)) for uid in studies) == len(acked) + len(studies)
