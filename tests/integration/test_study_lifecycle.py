"""The study queue on real SQLite and real PostgreSQL, under a controlled clock."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from node.complete.completer import Completer
from node.complete.completion import CompletionPolicy, CompletionReason
from node.db import Instance, Study, StudyEvent, make_engine, upgrade_database
from node.profiles import Role, Vocabulary
from node.receive.ingest import IngestRecords, IngestResult, InstanceRecord
from node.states import IngestOutcome, StudyState
from node.work.processing import WorkQueue
from tests.support.nodes import FakeClock as Clock
from tests.support.nodes import study_events

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
POLICY = CompletionPolicy(quiet_period=timedelta(seconds=60), force_after=timedelta(seconds=900))


def record(
    sop: str,
    study: str = "1.2.3",
    *,
    sha: str = "a" * 64,
    role: Role = Role.ANALYSE,
    body: str = "HAND",
) -> InstanceRecord:
    return InstanceRecord(
        study_instance_uid=study,
        series_instance_uid="1.2.3.1",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        role=role,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size_bytes=100,
        calling_ae_title="MODALITY",
        modality="CR",
        body_part_examined=body,
    )


def ingest(repo: IngestRecords, rec: InstanceRecord, path: str | None) -> IngestResult:
    """Record an instance whose content is identified by its file name in these tests."""
    return repo.record_instance(rec, path, lambda stored: stored == path)


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = make_engine(database_url)
    upgrade_database(engine)
    return engine


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def repo(engine: Engine, clock: Clock) -> IngestRecords:
    return IngestRecords(engine, clock)


@pytest.fixture
def completer(engine: Engine, clock: Clock) -> Completer:
    return Completer(engine, clock)


@pytest.fixture
def queue(engine: Engine, clock: Clock) -> WorkQueue:
    return WorkQueue(engine, clock)


def study(engine: Engine, uid: str = "1.2.3") -> Study:
    with Session(engine) as session:
        found = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert found is not None
        return found


def events(engine: Engine, uid: str = "1.2.3") -> list[str]:
    with Session(engine) as session:
        return list(
            session.scalars(
                select(StudyEvent.event)
                .join(Study, Study.id == StudyEvent.study_id)
                .where(Study.study_instance_uid == uid)
                .order_by(StudyEvent.id)
            )
        )


def test_instances_group_into_studies(repo: IngestRecords, engine: Engine, clock: Clock) -> None:
    ingest(repo, record("1.1", "1.2.3"), "instances/aa/a.dcm")
    clock.advance(5)
    ingest(repo, record("1.2", "1.2.3"), "instances/bb/b.dcm")
    ingest(repo, record("2.1", "4.5.6"), "instances/cc/c.dcm")
    first = study(engine, "1.2.3")
    assert first.state == StudyState.RECEIVING
    assert first.first_received_at == T0
    assert first.last_received_at == T0 + timedelta(seconds=5)
    with Session(engine) as session:
        counts = {
            uid: len(
                session.scalars(
                    select(Instance).join(Study).where(Study.study_instance_uid == uid)
                ).all()
            )
            for uid in ("1.2.3", "4.5.6")
        }
    assert counts == {"1.2.3": 2, "4.5.6": 1}


def test_resend_with_same_bytes_is_a_no_op(
    repo: IngestRecords, engine: Engine, clock: Clock
) -> None:
    assert ingest(repo, record("1.1"), "f1").outcome is IngestOutcome.STORED
    clock.advance(30)
    again = ingest(repo, record("1.1"), "f1")
    assert again.outcome is IngestOutcome.DUPLICATE
    assert study(engine).last_received_at == T0


def test_resend_with_different_bytes_replaces(
    repo: IngestRecords, engine: Engine, clock: Clock
) -> None:
    ingest(repo, record("1.1"), "old")
    clock.advance(10)
    result = ingest(repo, record("1.1"), "new")
    assert result.outcome is IngestOutcome.REPLACED
    assert result.obsolete_file == "old"
    with Session(engine) as session:
        rows = session.scalars(select(Instance)).all()
    assert [(r.file_path, r.revision) for r in rows] == [("new", 2)]
    assert study(engine).last_received_at == T0 + timedelta(seconds=10)


def test_completion_after_quiet_period(
    repo: IngestRecords, completer: Completer, engine: Engine, clock: Clock, vocabulary: Vocabulary
) -> None:
    ingest(repo, record("1.1"), "f1")
    clock.advance(59)
    assert completer.complete_studies(POLICY, vocabulary) == []
    clock.advance(1)
    [outcome] = completer.complete_studies(POLICY, vocabulary)
    assert (outcome.state, outcome.study_type) == (StudyState.READY, "hand")
    done = study(engine)
    assert (done.state, done.study_type, done.reason) == ("READY", "hand", "hand: 1 of 1 image")
    assert events(engine) == ["opened", "ready"]


def test_forced_completion(
    repo: IngestRecords, completer: Completer, engine: Engine, clock: Clock, vocabulary: Vocabulary
) -> None:
    for index in range(20):
        ingest(repo, record(f"1.{index}"), f"f{index}")
        clock.advance(50)
        outcomes = completer.complete_studies(POLICY, vocabulary)
        if outcomes:
            break
    assert clock.now - T0 >= timedelta(seconds=900)
    assert study(engine).state == StudyState.READY
    with Session(engine) as session:
        detail = session.scalars(select(StudyEvent.detail).where(StudyEvent.event == "ready")).one()
    assert detail.startswith("force timeout passed")


def test_ineligible_study_is_ignored_with_reason(
    repo: IngestRecords, completer: Completer, engine: Engine, clock: Clock, vocabulary: Vocabulary
) -> None:
    ingest(repo, record("1.1", body="CHEST"), "f1")
    ingest(repo, record("9.9", "7.7.7", role=Role.IGNORE), None)
    clock.advance(61)
    completer.complete_studies(POLICY, vocabulary)
    assert (study(engine).state, study(engine).reason) == (
        StudyState.IGNORED,
        "not an upper-extremity study (BodyPartExamined 'CHEST')",
    )
    only_other = study(engine, "7.7.7")
    assert (only_other.state, only_other.reason) == (
        StudyState.IGNORED,
        "no CR or DX image in the study (1 other object ignored)",
    )


def test_late_image_reopens_and_other_objects_do_not(
    repo: IngestRecords, completer: Completer, engine: Engine, clock: Clock, vocabulary: Vocabulary
) -> None:
    ingest(repo, record("1.1"), "f1")
    clock.advance(61)
    completer.complete_studies(POLICY, vocabulary)
    assert study(engine).state == StudyState.READY
    clock.advance(5)
    ingest(repo, record("1.9", role=Role.IGNORE), None)  # e.g. our own SR
    assert study(engine).state == StudyState.READY
    clock.advance(5)
    result = ingest(repo, record("1.2"), "f2")
    assert result.reopened
    reopened = study(engine)
    assert (reopened.state, reopened.generation) == (StudyState.RECEIVING, 2)
    assert reopened.opened_at == clock.now
    clock.advance(61)
    completer.complete_studies(POLICY, vocabulary)
    assert study(engine).state == StudyState.READY
    assert events(engine) == ["opened", "ready", "reopened", "ready"]


def test_arrival_during_completion_is_not_lost(
    repo: IngestRecords, completer: Completer, engine: Engine, clock: Clock, vocabulary: Vocabulary
) -> None:
    ingest(repo, record("1.1"), "f1")
    seen_last = study(engine).last_received_at
    clock.advance(61)
    ingest(repo, record("1.2"), "f2")  # arrives after the tick read the rows
    assert (
        completer._complete_one(study(engine).id, seen_last, 1, CompletionReason.QUIET, vocabulary)
        is None
    )
    assert study(engine).state == StudyState.RECEIVING


def test_claim_takes_each_ready_study_once(
    repo: IngestRecords,
    completer: Completer,
    queue: WorkQueue,
    engine: Engine,
    clock: Clock,
    vocabulary: Vocabulary,
) -> None:
    for index in range(3):
        ingest(repo, record(f"{index}.1", f"5.{index}"), f"f{index}")
        clock.advance(1)
    clock.advance(61)
    completer.complete_studies(POLICY, vocabulary)
    claimed = [queue.claim_ready_study("worker-a", timedelta(minutes=5)) for _ in range(4)]
    assert [c.study_instance_uid if c else None for c in claimed] == ["5.0", "5.1", "5.2", None]
    first = study(engine, "5.0")
    assert (first.state, first.claimed_by) == (StudyState.PROCESSING, "worker-a")
    assert first.lease_expires_at == clock.now + timedelta(minutes=5)


def _claim_all(
    url: str, worker: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    queue = WorkQueue(make_engine(url))
    start.wait()
    taken = []
    while (claim := queue.claim_ready_study(worker, timedelta(minutes=5))) is not None:
        taken.append(claim.study_id)
    out.put((worker, taken))


def test_two_processes_never_claim_the_same_study(
    database_url: str,
    repo: IngestRecords,
    completer: Completer,
    clock: Clock,
    vocabulary: Vocabulary,
) -> None:
    count = 60
    for index in range(count):
        ingest(repo, record(f"{index}.1", f"8.{index}"), f"f{index}")
    clock.advance(61)
    assert len(completer.complete_studies(POLICY, vocabulary)) == count
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    out = context.Queue()
    workers = [
        context.Process(target=_claim_all, args=(database_url, f"w{i}", start, out))
        for i in range(2)
    ]
    for process in workers:
        process.start()
    start.set()
    results = dict(out.get(timeout=120) for _ in workers)
    for process in workers:
        process.join(timeout=30)
        assert process.exitcode == 0
    first, second = results["w0"], results["w1"]
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(set(first + second))
    assert len(first) + len(second) == count


def test_schema_upgrade_keeps_rows(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    upgrade_database(engine)
    ingest(IngestRecords(engine), record("1.1"), "f1")
    upgrade_database(make_engine(database_url))
    assert study(engine).state == StudyState.RECEIVING


def details(engine: Engine, uid: str = "1.2.3") -> list[tuple[str, str | None]]:
    return study_events(engine, uid)


LEASE = timedelta(seconds=5)


def test_hold_sets_held_until_on_receiving_studies_only(
    repo: IngestRecords, completer: Completer, engine: Engine, clock: Clock, vocabulary: Vocabulary
) -> None:
    ingest(repo, record("1.1", "1.2.3"), "f1")
    ingest(repo, record("2.1", "4.5.6"), "f2")
    clock.advance(61)
    completer.complete_studies(POLICY, vocabulary)  # both READY
    ingest(repo, record("3.1", "7.8.9"), "f3")
    assert repo.hold_studies({"1.2.3", "7.8.9", "9.9.9"}, LEASE) == 1
    assert repo.hold_studies(set(), LEASE) == 0
    assert study(engine, "7.8.9").held_until == clock.now + LEASE
    assert study(engine, "1.2.3").held_until is None
    assert study(engine, "4.5.6").held_until is None


def test_held_study_waits_past_its_quiet_period_then_completes_once(
    repo: IngestRecords, completer: Completer, engine: Engine, clock: Clock, vocabulary: Vocabulary
) -> None:
    ingest(repo, record("1.1"), "f1")
    clock.advance(30)
    for _ in range(25):  # an image in flight for 100 s, its hold renewed every 4 s
        repo.hold_studies({"1.2.3"}, LEASE)
        clock.advance(4)
        assert completer.complete_studies(POLICY, vocabulary) == []
    assert study(engine).state == StudyState.RECEIVING
    ingest(repo, record("1.2"), "f2")  # the image arrives
    clock.advance(60)
    [outcome] = completer.complete_studies(POLICY, vocabulary)
    assert outcome.state == StudyState.READY
    finished = study(engine)
    assert finished.held_until is None
    assert [event for event, _ in details(engine)] == ["opened", "held", "ready"]
    held_detail, ready_detail = details(engine)[1][1], details(engine)[2][1]
    assert held_detail is not None and "image was still being received" in held_detail
    assert ready_detail is not None
    assert ready_detail.startswith("quiet period passed after waiting for an image in flight; ")


def test_a_lapsed_hold_lets_the_quiet_period_complete(
    repo: IngestRecords, completer: Completer, engine: Engine, clock: Clock, vocabulary: Vocabulary
) -> None:
    ingest(repo, record("1.1"), "f1")
    clock.advance(58)
    repo.hold_studies({"1.2.3"}, LEASE)  # the association ended before the data set did
    clock.advance(3)
    assert completer.complete_studies(POLICY, vocabulary) == []
    clock.advance(2)
    [outcome] = completer.complete_studies(POLICY, vocabulary)
    assert outcome.state == StudyState.READY
    assert details(engine)[-1][1] is not None
    assert str(details(engine)[-1][1]).startswith("quiet period passed after waiting for an image")


def test_a_hold_set_while_the_tick_decides_is_respected(
    repo: IngestRecords, completer: Completer, engine: Engine, clock: Clock, vocabulary: Vocabulary
) -> None:
    ingest(repo, record("1.1"), "f1")
    seen_last = study(engine).last_received_at
    clock.advance(61)
    repo.hold_studies({"1.2.3"}, LEASE)  # after the tick read the rows
    assert (
        completer._complete_one(study(engine).id, seen_last, 1, CompletionReason.QUIET, vocabulary)
        is None
    )
    assert study(engine).state == StudyState.RECEIVING


def test_force_timeout_completes_a_held_study(
    repo: IngestRecords, completer: Completer, engine: Engine, clock: Clock, vocabulary: Vocabulary
) -> None:
    ingest(repo, record("1.1"), "f1")
    while clock.now < T0 + timedelta(seconds=900):
        repo.hold_studies({"1.2.3"}, LEASE)  # a sender stalled for ever
        assert completer.complete_studies(POLICY, vocabulary) == []
        clock.advance(4)
    repo.hold_studies({"1.2.3"}, LEASE)
    [outcome] = completer.complete_studies(POLICY, vocabulary)
    assert outcome.state == StudyState.READY
    assert study(engine).held_until is None
    assert [event for event, _ in details(engine)] == ["opened", "held", "ready"]
    assert str(details(engine)[-1][1]).startswith(
        "force timeout passed while an image was still being received; "
    )
    assert repo.hold_studies({"1.2.3"}, LEASE) == 0  # a READY study is not held


def test_held_event_once_per_generation(
    repo: IngestRecords, completer: Completer, engine: Engine, clock: Clock, vocabulary: Vocabulary
) -> None:
    for generation in range(2):
        ingest(repo, record(f"1.{generation}"), f"f{generation}")
        clock.advance(61)
        repo.hold_studies({"1.2.3"}, LEASE)
        completer.complete_studies(POLICY, vocabulary)
        completer.complete_studies(POLICY, vocabulary)
        clock.advance(10)
        completer.complete_studies(POLICY, vocabulary)
    assert [event for event, _ in details(engine)] == [
        "opened",
        "held",
        "ready",
        "reopened",
        "held",
        "ready",
    ]
