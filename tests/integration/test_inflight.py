"""A study is not completed while one of its images is still being received: real associations
(dcmtk's storescu, pynetdicom) through a TCP proxy that stalls the sender in the middle of a data
set, against a node on loopback with a small PDU size, so that an image spans many PDUs."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db import Instance, Study
from node.operate.service import Node
from tests.support.factory import CR, make_radiograph, storescu, write
from tests.support.nodes import FakeClock, study_events
from tests.support.serve import wait_for

SMALL_PDU = {"maximum_pdu_size": 4096}
STALL_AFTER = 128 * 1024  # bytes from the sender: past the small image, inside the large one
HOLD_WAIT = 10.0  # seconds for the node's renewing thread (every 1 s here) to act


class StallingProxy:
    """Forwards one TCP connection to the node, but stops forwarding the sender's bytes after
    ``stall_after`` of them until ``release()``; the node's answers always pass."""

    def __init__(self, target_port: int, stall_after: int) -> None:
        self.target_port = target_port
        self.stall_after = stall_after
        self.forwarded = 0
        self.stalled = threading.Event()
        self.released = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        node = socket.create_connection(("127.0.0.1", self.target_port))
        self.sockets += [client, node]
        threading.Thread(target=self._to_node, args=(client, node), daemon=True).start()
        threading.Thread(target=self._pump, args=(node, client), daemon=True).start()

    def _to_node(self, client: socket.socket, node: socket.socket) -> None:
        try:
            while True:
                room = self.stall_after - self.forwarded
                if room <= 0 and not self.released.is_set():
                    self.stalled.set()
                    self.released.wait()
                    continue
                data = client.recv(65536 if self.released.is_set() else min(65536, room))
                if not data:
                    break
                node.sendall(data)
                self.forwarded += len(data)
            node.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def proxies() -> Iterator[Callable[[int], StallingProxy]]:
    made: list[StallingProxy] = []

    def make(target_port: int, stall_after: int = STALL_AFTER) -> StallingProxy:
        made.append(StallingProxy(target_port, stall_after))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


class Sender:
    """storescu on its own thread (it blocks while the proxy stalls it)."""

    def __init__(self, port: int, files: list[Path]) -> None:
        self.result: subprocess.CompletedProcess[str] | None = None
        self.thread = threading.Thread(target=self._run, args=(port, files), daemon=True)
        self.thread.start()

    def _run(self, port: int, files: list[Path]) -> None:
        self.result = storescu(port, files)

    def wait(self) -> subprocess.CompletedProcess[str]:
        self.thread.join(60)
        assert self.result is not None, "storescu did not finish"
        assert self.result.returncode == 0, self.result.stderr
        return self.result


def small_and_large(directory: Path, study_uid: str) -> tuple[Path, Path]:
    """Image 1 of 2 KiB, image 2 of 512 KiB (128 PDUs of 4 KiB) of the same study."""
    small = write(make_radiograph(study_uid=study_uid), directory / "small.dcm")
    large = write(
        make_radiograph(study_uid=study_uid, rows=512, columns=512, seed=1), directory / "large.dcm"
    )
    assert small.stat().st_size < STALL_AFTER // 4 and large.stat().st_size > 4 * STALL_AFTER
    return small, large


def study_row(node: Node, uid: str) -> Study:
    with Session(node.engine) as session:
        found = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert found is not None
        return found


def image_count(node: Node, uid: str) -> int:
    with Session(node.engine) as session:
        return len(
            session.scalars(
                select(Instance.id).join(Study).where(Study.study_instance_uid == uid)
            ).all()
        )


def held_now(node: Node, uid: str, clock: FakeClock) -> bool:
    """Whether the study is held at the clock's time (the node's own renewing thread holds it,
    every second in these tests' configuration, from the repository clock)."""
    held_until = study_row(node, uid).held_until
    return held_until is not None and held_until > clock.now


def history(node: Node, uid: str) -> list[tuple[str, str | None]]:
    return study_events(node.engine, uid)


def stalled_study(
    make_node: Callable[..., Node],
    make_proxy: Callable[[int], StallingProxy],
    directory: Path,
    completion: dict[str, float],
) -> tuple[Node, str, StallingProxy, Sender]:
    """A node with ``completion`` settings and a small PDU, and storescu sending it a small then a
    large image of one new study through a proxy, stalled inside the large image."""
    node = make_node(completion=completion, dicom=SMALL_PDU)
    uid = generate_uid()
    proxy = make_proxy(node.scp.port)
    sender = Sender(proxy.port, list(small_and_large(directory, uid)))
    assert proxy.stalled.wait(30), "the sender never reached the stall"
    return node, uid, proxy, sender


def finish_sending(node: Node, uid: str, proxy: StallingProxy, sender: Sender) -> None:
    """Let the stalled image through, then wait for its study to leave RECEIVING."""
    proxy.release()
    sender.wait()
    wait_for(
        lambda: study_row(node, uid).state != "RECEIVING",
        timeout=30.0,
        what="the study to complete",
    )


def test_a_stalled_image_holds_its_study_until_it_arrives(
    make_node: Callable[..., Node], proxies: Callable[[int], StallingProxy], tmp_path: Path
) -> None:
    """Real time: a 1 s quiet period, a 0.2 s tick, the sender stalled for 4 s mid-image."""
    node, uid, proxy, sender = stalled_study(
        make_node,
        proxies,
        tmp_path,
        {"quiet_period_s": 1.0, "tick_interval_s": 0.2, "force_complete_s": 120.0},
    )
    stalled_at = time.monotonic()
    while time.monotonic() - stalled_at < 4.0:  # four quiet periods
        row = study_row(node, uid)
        assert (row.state, image_count(node, uid)) == ("RECEIVING", 1), (
            f"completed with the first image while the second was in flight: {history(node, uid)}"
        )
        time.sleep(0.1)
    finish_sending(node, uid, proxy, sender)
    row = study_row(node, uid)
    assert (row.state, row.generation, image_count(node, uid)) == ("READY", 1, 2)
    events = history(node, uid)
    assert [event for event, _ in events] == ["opened", "held", "ready"]
    assert str(events[-1][1]).startswith("quiet period passed after waiting for an image in flight")


def test_a_hold_ends_by_the_time_the_quiet_period_after_its_image_does(
    make_node: Callable[..., Node], proxies: Callable[[int], StallingProxy], tmp_path: Path
) -> None:
    """Real time: a 1 s quiet period, holds renewed every 0.25 s, the sender stalled for 0.6 s
    mid-image (shorter than the quiet period), no periodic tick. The study is checked when the
    quiet period after its last image ends; the hold renewed while that image arrived has lapsed
    by then, so the study is READY then, with no hold in its history."""
    node, uid, proxy, sender = stalled_study(
        make_node,
        proxies,
        tmp_path,
        {"quiet_period_s": 1.0, "tick_interval_s": 3600.0, "force_complete_s": 3600.0},
    )
    wait_for(lambda: study_row(node, uid).held_until is not None, timeout=10, what="the hold")
    time.sleep(0.6)
    finish_sending(node, uid, proxy, sender)
    assert [event for event, _ in history(node, uid)] == ["opened", "ready"]


def test_an_image_in_flight_on_a_new_association_holds_its_study(
    make_node: Callable[..., Node], proxies: Callable[[int], StallingProxy], tmp_path: Path
) -> None:
    """A sender that opens one association per image: the study is read from the part of the
    data set that has arrived, not from what the association stored before (nothing)."""
    clock = FakeClock()
    node = make_node(clock=clock, completion={"quiet_period_s": 60.0}, dicom=SMALL_PDU)
    uid = generate_uid()
    small, large = small_and_large(tmp_path, uid)
    assert storescu(node.scp.port, [small]).returncode == 0
    proxy = proxies(node.scp.port)
    sender = Sender(proxy.port, [large])
    assert proxy.stalled.wait(30)
    wait_for(lambda: held_now(node, uid, clock), timeout=HOLD_WAIT, what="the study to be held")
    clock.advance(61)
    wait_for(lambda: held_now(node, uid, clock), timeout=HOLD_WAIT, what="the hold to be renewed")
    assert node.scheduler.tick() == []
    assert study_row(node, uid).state == "RECEIVING"
    proxy.release()
    sender.wait()
    clock.advance(61)
    [outcome] = node.scheduler.tick()
    assert outcome.state == "READY"
    assert image_count(node, uid) == 2
    assert [event for event, _ in history(node, uid)] == ["opened", "held", "ready"]


def test_the_study_in_flight_is_held_not_the_one_stored_before(
    make_node: Callable[..., Node], proxies: Callable[[int], StallingProxy], tmp_path: Path
) -> None:
    """One association carries study A, then study B's large image: B waits, A completes."""
    clock = FakeClock()
    node = make_node(clock=clock, completion={"quiet_period_s": 60.0}, dicom=SMALL_PDU)
    uid_a, uid_b = generate_uid(), generate_uid()
    small_b, large_b = small_and_large(tmp_path, uid_b)
    small_a = write(make_radiograph(study_uid=uid_a, seed=3), tmp_path / "a.dcm")
    assert storescu(node.scp.port, [small_b]).returncode == 0
    proxy = proxies(node.scp.port)
    sender = Sender(proxy.port, [small_a, large_b])
    assert proxy.stalled.wait(30)
    wait_for(lambda: held_now(node, uid_b, clock), timeout=HOLD_WAIT, what="study B to be held")
    assert study_row(node, uid_a).held_until is None
    clock.advance(61)
    wait_for(lambda: held_now(node, uid_b, clock), timeout=HOLD_WAIT, what="the hold to be renewed")
    assert [o.study_instance_uid for o in node.scheduler.tick()] == [uid_a]
    assert study_row(node, uid_b).state == "RECEIVING"
    proxy.release()
    sender.wait()


def test_an_idle_association_holds_nothing(make_node: Callable[..., Node], tmp_path: Path) -> None:
    """A peer that keeps its association open after storing an image does not hold the study."""
    clock = FakeClock()
    node = make_node(clock=clock, completion={"quiet_period_s": 60.0})
    uid = generate_uid()
    path = write(make_radiograph(study_uid=uid), tmp_path / "a.dcm")
    ae = AE(ae_title="IDLE")
    ae.add_requested_context(CR)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="MURA_NODE")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(path).Status == 0
        assert node.scp.studies_in_flight() == set()
        assert node.holds.renew() == 0
        clock.advance(61)
        [outcome] = node.scheduler.tick()
        assert (outcome.study_instance_uid, outcome.state) == (uid, "READY")
        assert assoc.is_established  # completed while the association was still open
        assert study_row(node, uid).held_until is None
    finally:
        assoc.release()


def test_force_timeout_completes_a_study_whose_sender_stalls_for_ever(
    make_node: Callable[..., Node], proxies: Callable[[int], StallingProxy], tmp_path: Path
) -> None:
    clock = FakeClock()
    node = make_node(
        clock=clock,
        completion={"quiet_period_s": 60.0, "force_complete_s": 900.0},
        dicom=SMALL_PDU,
    )
    uid = generate_uid()
    proxy = proxies(node.scp.port)
    sender = Sender(proxy.port, list(small_and_large(tmp_path, uid)))
    assert proxy.stalled.wait(30)
    wait_for(lambda: held_now(node, uid, clock), timeout=HOLD_WAIT, what="the study to be held")
    for _ in range(3):
        clock.advance(299)
        wait_for(
            lambda: held_now(node, uid, clock), timeout=HOLD_WAIT, what="the hold to be renewed"
        )
        assert node.scheduler.tick() == []
    clock.advance(3)  # 900 s after the study was opened
    wait_for(lambda: held_now(node, uid, clock), timeout=HOLD_WAIT, what="the hold to be renewed")
    [outcome] = node.scheduler.tick()
    assert outcome.state == "READY"
    assert image_count(node, uid) == 1
    events = history(node, uid)
    assert [event for event, _ in events] == ["opened", "held", "ready"]
    assert str(events[-1][1]).startswith(
        "force timeout passed while an image was still being received"
    )
    proxy.release()
    sender.wait()
    row = study_row(node, uid)  # the late image re-opens the study, as any late image does
    assert (row.state, row.generation, image_count(node, uid)) == ("RECEIVING", 2, 2)
