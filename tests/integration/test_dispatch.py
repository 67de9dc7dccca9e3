"""Delivery over real associations to destinations that are not as accommodating as Orthanc:
dcmtk's storescp accepting Implicit VR Little Endian only, pynetdicom SCPs that support only some
classes or syntaxes, that reject or abort the association, that never answer it, and that store
an object and then never answer the C-STORE (with and without Study Root C-FIND).

The node runs in this process; its worker (an untrained model at 64 x 64 input: what matters
here is that results exist) and dispatcher are driven step by step under a controlled clock,
with ``dispatch.timeout_s`` of one second.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pynetdicom.association
import pytest
import torch
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.config import Config, Destination
from node.db import Dispatch, Result, Study, StudyEvent
from node.deliver import scu
from node.deliver.dispatch import Dispatcher
from node.inference.engine import InferenceEngine
from node.inference.model import MuraDenseNet
from node.operate.service import Node
from node.operate.status import collect_status, study_history
from node.operate.status_view import render_history, render_status
from node.work.worker import build_worker
from tests.support import destination as dest
from tests.support.factory import dcmtk_env, free_port, storescu, write_study
from tests.support.nodes import FakeClock
from tests.support.orthanc import Orthanc
from tests.support.tls import make_certificates

TIMEOUT_S = 1.0
SR = "Comprehensive SR Storage"


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    torch.manual_seed(0)
    return InferenceEngine(
        [MuraDenseNet()], [], device=torch.device("cpu"), untrained=True, input_size=64
    )


class Delivering:
    """A node whose results go to one destination; the worker and the dispatcher run when told."""

    def __init__(self, node: Node, clock: FakeClock, engine: InferenceEngine, tmp: Path) -> None:
        self.node, self.clock, self.engine, self.tmp = node, clock, engine, tmp
        self.config: Config = node.config
        self.studies = 0

    def to(
        self,
        ae_title: str,
        port: int,
        host: str = "127.0.0.1",
        objects: tuple[str, ...] = ("sr", "sc"),
        **tls: Any,
    ) -> Dispatcher:
        """A destination for ``objects``: by default the SR and the heatmaps, one object of each
        SOP class the node sends (the summary image is one more Secondary Capture)."""
        destination = Destination(
            name="pacs", ae_title=ae_title, host=host, port=port, objects=objects, **tls
        )
        self.config = replace(self.node.config, destinations=(destination,))
        return Dispatcher(self.config, self.clock)

    def study(self, images: int = 1) -> str:
        """Receive and process one study; its results wait for delivery."""
        self.studies += 1
        files = write_study(
            self.tmp / f"study{self.studies}", images, body_part="WRIST", rows=48, columns=40
        )
        assert storescu(self.node.scp.port, files).returncode == 0
        self.clock.advance(3600)
        self.node.scheduler.tick()
        worker = build_worker(self.config, self.engine, self.clock)
        try:
            assert worker.run_once()
            worker.drain()
        finally:
            worker.close()
        return str(dcmread(files[0]).StudyInstanceUID)

    def deliveries(self) -> dict[str, Dispatch]:
        """By result kind and position: "sr", "sc", "sc2", ..."""
        with Session(self.node.engine) as session:
            rows = session.execute(
                select(Dispatch, Result.kind).join(Result).order_by(Result.id)
            ).all()
        named: dict[str, Dispatch] = {}
        for dispatch, kind in rows:
            key = (
                kind if kind not in named else f"{kind}{sum(k.startswith(kind) for k in named) + 1}"
            )
            named[key] = dispatch
        return named

    def results(self) -> list[Result]:
        with Session(self.node.engine) as session:
            return list(session.scalars(select(Result).order_by(Result.id)))

    def events(self, name: str) -> list[str]:
        with Session(self.node.engine) as session:
            return [
                e.detail or ""
                for e in session.scalars(select(StudyEvent).where(StudyEvent.event == name))
            ]

    def state(self, study_uid: str) -> str:
        with Session(self.node.engine) as session:
            return session.scalars(
                select(Study.state).where(Study.study_instance_uid == study_uid)
            ).one()


def start_delivering(
    make_node: Callable[..., Node], engine: InferenceEngine, tmp_path: Path, **sections: Any
) -> Delivering:
    clock = FakeClock()
    dispatch = {"timeout_s": TIMEOUT_S, "first_retry_s": 30.0, "max_attempts": 5}
    node = make_node(clock=clock, dispatch=dispatch, **sections)
    return Delivering(node, clock, engine, tmp_path)


@pytest.fixture
def delivering(
    make_node: Callable[..., Node], engine: InferenceEngine, tmp_path: Path
) -> Delivering:
    return start_delivering(make_node, engine, tmp_path)


@pytest.fixture
def delivering_any_db(
    make_node: Callable[..., Node], engine: InferenceEngine, tmp_path: Path, database_url: str
) -> Delivering:
    """The same, once with SQLite and once with PostgreSQL."""
    return start_delivering(make_node, engine, tmp_path, database={"url": database_url})


@pytest.fixture
def pacs() -> Iterator[Callable[..., dest.Destination]]:
    started: list[dest.Destination] = []

    def start(**options: Any) -> dest.Destination:
        destination = dest.Destination(**options)
        destination.start()
        started.append(destination)
        return destination

    yield start
    for destination in started:
        destination.stop()


# --- transfer syntaxes ------------------------------------------------------------------------


@contextlib.contextmanager
def bit_preserving_storescp(tmp_path: Path, syntax_option: str) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp with ``syntax_option`` (+xi: Implicit VR Little Endian only; +xe:
    Explicit VR Little Endian preferred), writing what it receives bit for bit (+B)."""
    port, out = free_port(), tmp_path / f"storescp{syntax_option}"
    out.mkdir()
    command = ["storescp", syntax_option, "+B", "-aet", "ARCHIVE", "-od", str(out), str(port)]
    process = subprocess.Popen(command, env=dcmtk_env(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "storescp did not start"
                time.sleep(0.05)
        yield port, out
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def implicit_only_storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    with bit_preserving_storescp(tmp_path, "+xi") as started:
        yield started


def data_set_bytes(path: Path) -> bytes:
    """A Part 10 file's bytes after its preamble and File Meta Information (PS3.10 7.1: "DICM"
    at 128, then (0002,0000) File Meta Information Group Length, UL, explicit VR)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL"
    (group_length,) = struct.unpack("<I", data[140:144])
    return data[144 + group_length :]


def test_every_result_is_written_in_explicit_vr_and_sent_as_written(
    delivering: Delivering, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[Path] = []

    def recording_dcmread(path: Any, *args: Any, **kwargs: Any) -> Dataset:
        decoded.append(Path(path))
        return dcmread(path, *args, **kwargs)

    monkeypatch.setattr(scu, "dcmread", recording_dcmread)
    monkeypatch.setattr(pynetdicom.association, "dcmread", recording_dcmread)
    every_kind = ("sr", "sc", "summary", "gsps")
    with bit_preserving_storescp(tmp_path, "+xe") as (port, out):
        dispatcher = delivering.to("ARCHIVE", port, objects=every_kind)
        delivering.study(images=2)
        try:
            assert dispatcher.run_once() == 6  # SR, 2 heatmaps, summary, 2 presentation states
        finally:
            dispatcher.close()
    assert {d.state for d in delivering.deliveries().values()} == {"SENT"}
    assert decoded == []  # sent from the file, never decoded and encoded again
    received = {str(dcmread(p).SOPInstanceUID): p for p in out.iterdir()}
    results = delivering.results()
    assert {r.kind for r in results} == set(every_kind)
    assert set(received) == {r.sop_instance_uid for r in results}
    for result in results:
        original = delivering.node.store.path_of(result.file_path)
        assert dcmread(original).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, result.kind
        arrived = received[result.sop_instance_uid]
        assert dcmread(arrived).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert data_set_bytes(arrived) == data_set_bytes(original), result.kind


def test_implicit_vr_only_destination_receives_the_sr_and_the_heatmaps_intact(
    delivering: Delivering, implicit_only_storescp: tuple[int, Path]
) -> None:
    port, out = implicit_only_storescp
    dispatcher = delivering.to("ARCHIVE", port, objects=("sr", "sc", "summary"))
    study_uid = delivering.study(images=2)
    try:
        assert dispatcher.run_once() == 4
    finally:
        dispatcher.close()
    assert {d.state for d in delivering.deliveries().values()} == {"SENT"}, [
        d.last_error for d in delivering.deliveries().values()
    ]
    assert delivering.state(study_uid) == "DONE"
    received = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, out.iterdir())}
    results = delivering.results()
    assert set(received) == {r.sop_instance_uid for r in results}
    for result in results:
        original = dcmread(delivering.node.store.path_of(result.file_path))
        arrived = received[result.sop_instance_uid]
        assert arrived.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert_same_content(arrived, original)
        if result.kind in ("sc", "summary"):
            assert (arrived.pixel_array == original.pixel_array).all()
            assert arrived.pixel_array.shape == (original.Rows, original.Columns, 3)
        else:
            assert len(arrived.ContentSequence) == len(original.ContentSequence) > 0


def test_a_file_that_fails_while_it_streams_ends_its_association_not_the_round(
    delivering: Delivering,
    pacs: Callable[..., dest.Destination],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read error while a result's bytes go out (no real disk fails on cue here: pynetdicom's
    send raises once, as it would for an I/O error in the middle of the file): that delivery is
    retried later, and the association, which may hold part of a message at the peer, carries
    nothing more; the other results wait for the next round instead of following it."""
    destination = pacs()
    dispatcher = delivering.to("PACS", destination.port)
    delivering.study()
    send = pynetdicom.association.Association.send_c_store
    failures = [OSError("Input/output error")]

    def failing_once(assoc: Any, dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        if failures:
            raise failures.pop()
        return send(assoc, dataset, *args, **kwargs)

    monkeypatch.setattr(pynetdicom.association.Association, "send_c_store", failing_once)
    try:
        assert dispatcher.run_once() == 2  # the SR and the heatmap were due
    finally:
        dispatcher.close()
    first, second = delivering.deliveries().values()
    assert (first.state, first.attempts) == ("RETRY", 1)
    assert first.last_error == "OSError: Input/output error"
    assert (second.state, second.attempts) == ("PENDING", 0)  # not sent on the aborted association
    assert destination.stores == 0
    delivering.clock.advance(3600)
    dispatcher = delivering.to("PACS", destination.port)
    try:
        dispatcher.run_once()
    finally:
        dispatcher.close()
    assert {d.state for d in delivering.deliveries().values()} == {"SENT"}
    assert destination.stores == 2


def assert_same_content(arrived: Dataset, original: Dataset, path: str = "") -> None:
    """Element by element, through every sequence: same tags, same values (the VR of an
    element read from Implicit VR comes from the dictionary; OB and OW pixel data are the same
    bytes in little endian)."""
    assert [e.tag for e in arrived] == [e.tag for e in original], path
    for a, o in zip(arrived, original, strict=True):
        where = f"{path}/{o.keyword or o.tag}"
        if o.VR == "SQ":
            assert len(a.value) == len(o.value), where
            for index, (item_a, item_o) in enumerate(zip(a.value, o.value, strict=True)):
                assert_same_content(item_a, item_o, f"{where}[{index}]")
        else:
            assert a.value == o.value, where


@pytest.mark.parametrize(
    ("contexts", "refused"),
    [
        ({dest.SC_CLASS: dest.UNCOMPRESSED}, {"sr"}),  # no SR at all
        ({dest.SR_CLASS: [ExplicitVRBigEndian], dest.SC_CLASS: dest.UNCOMPRESSED}, {"sr"}),
        ({"1.2.840.10008.5.1.4.1.1.1": dest.UNCOMPRESSED}, {"sr", "sc"}),  # CR only: none of ours
    ],
    ids=["sc-only", "sr-in-big-endian-only", "no-context-of-ours"],
)
def test_a_class_the_destination_does_not_accept_gets_its_own_error(
    delivering: Delivering,
    pacs: Callable[..., dest.Destination],
    contexts: dict[str, list[str]],
    refused: set[str],
) -> None:
    destination = pacs(contexts=contexts)
    dispatcher = delivering.to("PACS", destination.port)
    study_uid = delivering.study()
    try:
        assert dispatcher.run_once() == 2
    finally:
        dispatcher.close()
    deliveries = delivering.deliveries()
    errors = {
        "sr": f"pacs accepted no presentation context for {SR}",
        "sc": "pacs accepted no presentation context for Secondary Capture Image Storage",
    }
    for kind, delivery in deliveries.items():
        if kind in refused:
            assert (delivery.state, delivery.last_error) == ("RETRY", errors[kind])
        else:  # the other class still goes on the same association
            assert (delivery.state, delivery.last_error) == ("SENT", None)
    assert len(destination.heatmaps(study_uid)) == (0 if "sc" in refused else 1)
    assert destination.reports(study_uid) == set()


# --- association outcomes ---------------------------------------------------------------------


def first_error(delivering: Delivering, dispatcher: Dispatcher) -> str:
    """The one error a study's two deliveries got from one round."""
    delivering.study()
    try:
        assert dispatcher.run_once() == 2
    finally:
        dispatcher.close()
    errors = {d.last_error for d in delivering.deliveries().values()}
    assert len(errors) == 1 and {d.state for d in delivering.deliveries().values()} == {"RETRY"}
    return str(errors.pop())


def test_nothing_listening_is_cannot_connect_with_host_and_port(delivering: Delivering) -> None:
    port = free_port()
    error = first_error(delivering, delivering.to("PACS", port))
    assert error == f"cannot connect to 127.0.0.1:{port}: Connection refused"


def test_unknown_host_is_cannot_connect_with_the_reason(delivering: Delivering) -> None:
    error = first_error(delivering, delivering.to("PACS", 104, host="pacs.invalid"))
    assert error.startswith("cannot connect to pacs.invalid:104: ")
    assert "refused" not in error and "aborted" not in error


def test_untrusted_tls_certificate_is_cannot_connect_with_the_tls_reason(
    delivering: Delivering, pacs: Callable[..., dest.Destination], tmp_path: Path
) -> None:
    certificates = make_certificates(tmp_path / "certificates")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(certificates.server_cert), str(certificates.server_key))
    destination = pacs(ssl_context=server)
    dispatcher = delivering.to(
        "PACS", destination.port, host="localhost", tls=True, tls_ca=str(certificates.other_ca)
    )
    error = first_error(delivering, dispatcher)
    assert error.startswith(f"cannot connect to localhost:{destination.port}: TLS: ")
    assert "certificate" in error


def test_wrong_called_ae_title_is_rejected_with_the_reason(
    delivering: Delivering, pacs: Callable[..., dest.Destination]
) -> None:
    destination = pacs(ae_title="PACS")
    error = first_error(delivering, delivering.to("NOTPACS", destination.port))
    assert error == (
        "pacs rejected the association: Called AE title not recognised "
        "(Rejected Permanent, Service User)"
    )


@contextlib.contextmanager
def scripted_peer(answer: bytes | None) -> Iterator[int]:
    """A peer that reads one A-ASSOCIATE-RQ PDU, sends ``answer`` (raw PDU bytes) and closes
    the connection; with None it only closes it."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            header = connection.recv(6, socket.MSG_WAITALL)
            connection.recv(struct.unpack(">I", header[2:])[0], socket.MSG_WAITALL)
            if answer is not None:
                connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        thread.join(10)
        server.close()


A_ABORT_BY_USER = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x00, 0x00])  # PS3.8 9.3.8, source 0


def test_destination_that_aborts_the_request_is_aborted(delivering: Delivering) -> None:
    with scripted_peer(A_ABORT_BY_USER) as port:
        error = first_error(delivering, delivering.to("PACS", port))
    assert error == "pacs aborted the association request"


def test_destination_that_drops_the_request_closed_the_connection(delivering: Delivering) -> None:
    with scripted_peer(None) as port:
        error = first_error(delivering, delivering.to("PACS", port))
    assert error == "pacs closed the connection during association negotiation"


def test_destination_that_never_answers_the_request_says_so(delivering: Delivering) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts TCP, never speaks DICOM
        error = first_error(delivering, delivering.to("PACS", silent.getsockname()[1]))
    assert error == "pacs did not answer the association request within 1 s"


# --- lost responses ---------------------------------------------------------------------------


def lose_the_first_response(
    delivering: Delivering, destination: dest.Destination
) -> tuple[str, Dispatcher]:
    """A study's SR is stored by the destination, whose response never comes within the
    dispatcher's timeout; the heatmap goes in the next round. Returns the study and the
    dispatcher, with the SR due again."""
    dispatcher = delivering.to("PACS", destination.port)
    study_uid = delivering.study()
    destination.hang = 1
    assert dispatcher.run_once() == 2
    destination.unblock.set()
    sr = delivering.deliveries()["sr"]
    assert (sr.state, sr.unanswered, sr.attempts) == ("RETRY", True, 1)
    assert "no response from pacs within 1 s" in (sr.last_error or "")
    assert delivering.deliveries()["sc"].state == "PENDING"  # its association had ended
    assert dispatcher.run_once() == 1
    assert delivering.deliveries()["sc"].state == "SENT"
    delivering.clock.advance(31)
    return study_uid, dispatcher


def test_lost_response_is_confirmed_by_c_find_and_not_sent_again(
    delivering_any_db: Delivering, pacs: Callable[..., dest.Destination]
) -> None:
    delivering = delivering_any_db
    destination = pacs(find=True)
    study_uid, dispatcher = lose_the_first_response(delivering, destination)
    try:
        assert dispatcher.run_once() == 1
    finally:
        dispatcher.close()
    sr = delivering.deliveries()["sr"]
    assert (sr.state, sr.unanswered, sr.attempts, sr.last_error) == ("SENT", False, 1, None)
    assert set(destination.copies.values()) == {1}  # every object exactly once
    assert len(destination.copies) == 2
    assert delivering.state(study_uid) == "DONE"
    (confirmed,) = delivering.events("delivery confirmed")
    assert confirmed.startswith(f"pacs: SR {sr_uid(delivering)} held by the destination (C-FIND)")
    assert_visible(delivering, study_uid, "delivery confirmed", confirmed)


def test_lost_response_without_c_find_is_sent_again_and_recorded(
    delivering_any_db: Delivering, pacs: Callable[..., dest.Destination]
) -> None:
    delivering = delivering_any_db
    destination = pacs(find=False)
    study_uid, dispatcher = lose_the_first_response(delivering, destination)
    try:
        assert dispatcher.run_once() == 1
    finally:
        dispatcher.close()
    sr = delivering.deliveries()["sr"]
    assert (sr.state, sr.unanswered, sr.attempts) == ("SENT", False, 2)
    assert destination.copies[sr_uid(delivering)] == 2
    assert delivering.state(study_uid) == "DONE"
    (again,) = delivering.events("sent again")
    assert again == (
        f"pacs: SR {sr_uid(delivering)} sent again after an attempt without response; pacs "
        "offers no C-FIND, so it may hold the object twice or have replaced it"
    )
    assert_visible(delivering, study_uid, "sent again", again)


def test_lost_response_not_held_by_the_destination_is_sent_without_an_event(
    delivering_any_db: Delivering, pacs: Callable[..., dest.Destination]
) -> None:
    delivering = delivering_any_db
    destination = pacs(find=True)
    study_uid, dispatcher = lose_the_first_response(delivering, destination)
    destination.held.clear()  # it lost the object after all
    try:
        assert dispatcher.run_once() == 1
    finally:
        dispatcher.close()
    sr = delivering.deliveries()["sr"]
    assert (sr.state, sr.unanswered, sr.attempts) == ("SENT", False, 2)
    assert destination.copies[sr_uid(delivering)] == 2
    assert delivering.events("delivery confirmed") == delivering.events("sent again") == []
    assert delivering.state(study_uid) == "DONE"


def test_lost_response_with_a_failing_c_find_is_sent_again_and_recorded(
    delivering: Delivering, pacs: Callable[..., dest.Destination]
) -> None:
    destination = pacs(find=True, find_status=0xA700)
    study_uid, dispatcher = lose_the_first_response(delivering, destination)
    assert delivering.state(study_uid) == "DISPATCHING"
    try:
        assert dispatcher.run_once() == 1
    finally:
        dispatcher.close()
    assert delivering.deliveries()["sr"].state == "SENT"
    assert destination.copies[sr_uid(delivering)] == 2
    (again,) = delivering.events("sent again")
    assert "pacs answered the C-FIND with a failure, so it may hold the object twice" in again
    assert delivering.state(study_uid) == "DONE"


@pytest.mark.parametrize("holds", [True, False], ids=["held", "not-held"])
def test_c_find_against_orthanc_decides_whether_a_lost_response_goes_again(
    delivering: Delivering, tmp_path: Path, holds: bool
) -> None:
    """Orthanc (a real PACS) answers the node's IMAGE-level Study Root C-FIND. The lost response
    is made by hand here (the delivery is marked unanswered after Orthanc stored the SR); the
    tests above lose it for real, against a PACS that never answers."""
    orthanc = Orthanc(tmp_path / "orthanc", extra={"DicomAlwaysAllowFind": True})
    orthanc.start()
    try:
        dispatcher = delivering.to(orthanc.ae_title, orthanc.dicom_port)
        study_uid = delivering.study()
        assert dispatcher.run_once() == 2
        sr = delivering.deliveries()["sr"]
        with Session(delivering.node.engine) as session, session.begin():
            lost = session.get_one(Dispatch, sr.id)
            lost.state, lost.unanswered, lost.next_attempt_at = "RETRY", True, delivering.clock()
        if not holds:  # Orthanc lost it after all
            (stored,) = [
                i
                for i in orthanc.get("/instances")
                if orthanc.get(f"/instances/{i}/simplified-tags")["Modality"] == "SR"
            ]
            orthanc.delete(f"/instances/{stored}")
        try:
            assert dispatcher.run_once() == 1
        finally:
            dispatcher.close()
        sr = delivering.deliveries()["sr"]
        assert (sr.state, sr.unanswered) == ("SENT", False)
        assert sr.attempts == (1 if holds else 2)
        assert len(delivering.events("delivery confirmed")) == (1 if holds else 0)
        assert delivering.events("sent again") == []
        assert len(orthanc.get("/instances")) == 2
        assert delivering.state(study_uid) == "DONE"
    finally:
        orthanc.stop()


def sr_uid(delivering: Delivering) -> str:
    return next(r.sop_instance_uid for r in delivering.results() if r.kind == "sr")


def assert_visible(delivering: Delivering, study_uid: str, event: str, detail: str) -> None:
    """`mura-node studies show` lists the event; `mura-node status` lists it as a delivery that
    followed an unanswered attempt."""
    history = study_history(delivering.node.engine, study_uid)
    assert history is not None
    assert {"event": event, "detail": detail} in [
        {k: getattr(e, k) for k in ("event", "detail")} for e in history.history
    ]
    assert event in render_history(history)
    report = collect_status(delivering.node.engine, delivering.clock())
    assert [(r.event, r.detail) for r in report.after_unanswered] == [(event, detail)]
    assert detail[:60] in render_status(report, "test")
