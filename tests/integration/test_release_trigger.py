"""Release-triggered completion on real associations (dcmtk's storescu, pynetdicom) against a node
on loopback whose clock moves only when the test says so: a study forwarded by a configured
calling AE title completes after the settle time, anything else after the quiet period."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.complete.completer import Completer
from node.complete.completion import CompletionReason
from node.db import Association, Study, StudyEvent, make_engine
from node.operate.service import Node
from node.states import AssociationEnding, StudyEventName
from tests.support.factory import CR, storescu, write_study
from tests.support.nodes import FakeClock
from tests.support.serve import wait_for

QUIET = 60.0
SETTLE = 5.0
RELEASE = {
    "quiet_period_s": QUIET,
    "release_trigger_aes": ("ORTHANC",),
    "release_settle_s": SETTLE,
}


def endings(node: Node, uid: str) -> list[str | None]:
    with Session(node.engine) as session:
        return list(
            session.scalars(
                select(Association.ending)
                .where(Association.study_instance_uid == uid)
                .order_by(Association.id)
            )
        )


def ended(node: Node, uid: str, count: int = 1) -> bool:
    found = endings(node, uid)
    return len(found) == count and None not in found


def completion_detail(node: Node, uid: str) -> str:
    with Session(node.engine) as session:
        details = session.scalars(
            select(StudyEvent.detail)
            .join(Study, Study.id == StudyEvent.study_id)
            .where(
                Study.study_instance_uid == uid,
                StudyEvent.event.in_([StudyEventName.READY, StudyEventName.IGNORED]),
            )
        ).all()
    [detail] = details
    assert detail is not None
    return detail


def send(node: Node, tmp_path: Path, calling: str, count: int = 3, uid: str | None = None) -> str:
    uid = uid or generate_uid()
    files = write_study(
        tmp_path / f"{calling}-{uid[-6:]}", count, study_uid=uid, body_part="WRIST", rows=64
    )
    result = storescu(node.scp.port, files, calling=calling)
    assert result.returncode == 0, result.stderr
    return uid


def test_a_study_from_a_configured_sender_completes_after_the_settle_time(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    clock = FakeClock()
    node = make_node(clock=clock, completion=RELEASE)
    uid = send(node, tmp_path, "ORTHANC")
    wait_for(
        lambda: ended(node, uid), timeout=30.0, what="the association's release to be recorded"
    )
    assert endings(node, uid) == [AssociationEnding.RELEASED]
    clock.advance(SETTLE - 0.1)
    assert node.scheduler.tick() == []
    clock.advance(0.1)
    [outcome] = node.scheduler.tick()
    assert (outcome.study_instance_uid, outcome.state) == (uid, "READY")
    assert completion_detail(node, uid).startswith("released by ORTHANC after 5 s settle; ")
    assert endings(node, uid) == []  # the completed generation's rows are gone


def test_a_modality_sending_image_by_image_waits_for_the_quiet_period(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """Another calling AE title: one association per image, each released, no result per image."""
    clock = FakeClock()
    node = make_node(clock=clock, completion=RELEASE)
    uid = generate_uid()
    for index in range(3):
        files = write_study(tmp_path / f"image{index}", 1, study_uid=uid, prefix=f"i{index}")
        assert storescu(node.scp.port, files, calling="MODALITY").returncode == 0
        clock.advance(SETTLE)
        assert node.scheduler.tick() == []
    assert endings(node, uid) == []  # other senders' associations are not recorded
    clock.advance(QUIET - SETTLE - 0.1)
    assert node.scheduler.tick() == []
    clock.advance(0.1)
    [outcome] = node.scheduler.tick()
    assert outcome.study_instance_uid == uid
    assert completion_detail(node, uid).startswith("quiet period passed; ")


def test_one_image_from_another_sender_gives_the_study_the_quiet_period(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    clock = FakeClock()
    node = make_node(clock=clock, completion=RELEASE)
    uid = send(node, tmp_path, "ORTHANC", 2)
    send(node, tmp_path, "MODALITY", 1, uid)
    wait_for(
        lambda: ended(node, uid), timeout=30.0, what="the association's release to be recorded"
    )
    clock.advance(QUIET - 0.1)
    assert node.scheduler.tick() == []
    clock.advance(0.1)
    assert [o.study_instance_uid for o in node.scheduler.tick()] == [uid]
    assert completion_detail(node, uid).startswith("quiet period passed; ")


def test_an_open_association_waits_and_its_release_then_completes_the_study(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    clock = FakeClock()
    node = make_node(clock=clock, completion=RELEASE)
    uid = generate_uid()
    files = write_study(tmp_path / "study", 3, study_uid=uid, body_part="WRIST")
    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context(CR)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="MURA_NODE")
    assert assoc.is_established
    try:
        for path in files:
            assert assoc.send_c_store(path).Status == 0
        assert endings(node, uid) == [None]
        clock.advance(SETTLE * 2)
        assert node.scheduler.tick() == []  # still open: the sender may have more to send
    finally:
        assoc.release()
    wait_for(
        lambda: ended(node, uid), timeout=30.0, what="the association's release to be recorded"
    )
    assert node.scheduler.tick() == []  # the settle time counts from the release
    clock.advance(SETTLE)
    assert [o.study_instance_uid for o in node.scheduler.tick()] == [uid]


def test_an_aborted_association_gives_the_study_the_quiet_period(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    clock = FakeClock()
    node = make_node(clock=clock, completion=RELEASE)
    uid = generate_uid()
    files = write_study(tmp_path / "study", 2, study_uid=uid, body_part="WRIST")
    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context(CR)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="MURA_NODE")
    for path in files:
        assert assoc.send_c_store(path).Status == 0
    assoc.abort()
    wait_for(lambda: ended(node, uid), timeout=30.0, what="the association's abort to be recorded")
    assert endings(node, uid) == [AssociationEnding.ABORTED]
    clock.advance(QUIET - 0.1)
    assert node.scheduler.tick() == []
    clock.advance(0.1)
    assert [o.study_instance_uid for o in node.scheduler.tick()] == [uid]
    assert completion_detail(node, uid).startswith("quiet period passed; ")


def test_a_re_sent_study_is_re_opened_and_completes_after_its_new_release(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """The first generation's release does not complete the second one early."""
    clock = FakeClock()
    node = make_node(clock=clock, completion=RELEASE)
    uid = send(node, tmp_path, "ORTHANC", 2)
    wait_for(lambda: ended(node, uid), timeout=30.0, what="the first release to be recorded")
    clock.advance(SETTLE)
    assert [o.study_instance_uid for o in node.scheduler.tick()] == [uid]
    clock.advance(100)
    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context(CR)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="MURA_NODE")
    [extra] = write_study(tmp_path / "more", 1, study_uid=uid, prefix="more")
    try:
        assert assoc.send_c_store(extra).Status == 0  # re-opens the study
        clock.advance(SETTLE)
        assert node.scheduler.tick() == []
    finally:
        assoc.release()
    wait_for(lambda: ended(node, uid), timeout=30.0, what="the second release to be recorded")
    clock.advance(SETTLE)
    assert [o.study_instance_uid for o in node.scheduler.tick()] == [uid]


def test_another_node_sharing_the_database_sees_the_release(
    make_node: Callable[..., Node], tmp_path: Path, database_url: str
) -> None:
    """The associations live in the database: a completer of another node decides from them."""
    url = database_url
    clock = FakeClock()
    receiving = make_node(clock=clock, completion=RELEASE, database={"url": url})
    uid = send(receiving, tmp_path, "ORTHANC")
    wait_for(
        lambda: ended(receiving, uid), timeout=30.0, what="the association's release to be recorded"
    )
    engine = make_engine(url)
    try:
        other = Completer(engine, clock)
        clock.advance(SETTLE)
        policy = receiving.scheduler.policy
        [outcome] = other.complete_studies(policy, receiving.scheduler.vocabulary)
        assert outcome.study_instance_uid == uid
    finally:
        engine.dispose()


class _Peer:
    """Stands for a pynetdicom association (a key the association log holds weakly)."""


def test_an_association_that_begins_while_the_tick_decides_keeps_the_study_open(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """The tick found the study released; before its decision commits, Orthanc opens another
    association for the same study: the decision is taken again under the lock, and waits."""
    clock = FakeClock()
    node = make_node(clock=clock, completion=RELEASE)
    uid = send(node, tmp_path, "ORTHANC")
    wait_for(
        lambda: ended(node, uid), timeout=30.0, what="the association's release to be recorded"
    )
    clock.advance(SETTLE)
    with Session(node.engine) as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
    associations = node.handler.associations
    assert associations is not None
    peer = _Peer()
    associations.delivering(peer, "ORTHANC", uid)  # type: ignore[arg-type]
    completer = node.scheduler.completer
    policy, vocabulary = node.scheduler.policy, node.scheduler.vocabulary
    reason = CompletionReason.RELEASED
    decided = completer._complete_one(
        study.id, study.last_received_at, study.generation, reason, vocabulary, policy
    )
    assert decided is None
    assert node.scheduler.tick() == []
    associations.ended(peer, AssociationEnding.RELEASED)  # type: ignore[arg-type]
    assert node.scheduler.tick() == []  # a new settle time from this release
    clock.advance(SETTLE)
    assert [o.study_instance_uid for o in node.scheduler.tick()] == [uid]


def test_a_hold_keeps_a_released_study_open_while_an_image_is_in_flight(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """A hold (an image of the study in flight, node/receive/holds.py) applies after a release as
    it does to the quiet period; the history says so."""
    clock = FakeClock()
    node = make_node(clock=clock, completion=RELEASE)
    uid = send(node, tmp_path, "ORTHANC")
    wait_for(
        lambda: ended(node, uid), timeout=30.0, what="the association's release to be recorded"
    )
    clock.advance(SETTLE)
    assert node.ingest.hold_studies({uid}, timedelta(seconds=10)) == 1
    assert node.scheduler.tick() == []
    with Session(node.engine) as session:
        held = session.scalars(
            select(StudyEvent.detail).where(StudyEvent.event == StudyEventName.HELD)
        ).all()
    assert held == [
        "settle time after release passed while an image was still being received; waiting for it"
    ]
    clock.advance(10)  # the hold lapses: the image was stored elsewhere, or never came
    assert [o.study_instance_uid for o in node.scheduler.tick()] == [uid]
    assert completion_detail(node, uid).startswith(
        "released by ORTHANC after 5 s settle, after waiting for an image in flight; "
    )
