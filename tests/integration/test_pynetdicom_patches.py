"""node/pynetdicom_patches/ against the installed pynetdicom.

The first test checks the shape of every private attribute, method and signature the patches rely
on; the others run each patch over a real loopback association. A failure here after a pynetdicom
upgrade means a patch must be re-checked against the new version (they were written against
``PYNETDICOM_CHECKED``).
"""

from __future__ import annotations

import inspect
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynetdicom
import pynetdicom.association
import pynetdicom.dul
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.pynetdicom_patches import (
    PYNETDICOM_CHECKED,
    REACTOR_POLL_S,
    BoundedSocket,
    DULClock,
    PreparingRequestHandler,
    ReactorClock,
    bound_pdu_reads,
    check_store_requests,
    data_set_path,
    discard_partial_data_set,
    held_problem,
    message_being_received,
    register_server,
    set_idle_sleep,
    stream_data_sets_to_disk,
)

UPGRADE = (
    f"pynetdicom {pynetdicom.__version__} is installed; node/pynetdicom_patches/ was checked "
    f"against pynetdicom {PYNETDICOM_CHECKED}: re-check the patch that relies on this"
)


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_private_internals_have_the_shape_the_patches_rely_on() -> None:
    assert isinstance(getattr(_config, "STORE_RECV_CHUNKED_DATASET", None), bool), UPGRADE
    assert isinstance(getattr(_config, "STORE_SEND_CHUNKED_DATASET", None), bool), UPGRADE
    ae = AE()
    assert isinstance(getattr(ae, "_servers", None), list), UPGRADE
    assert {"server_class", "ssl_context", "kwargs"} <= set(parameters(AE.make_server)), UPGRADE
    assert "request_handler" in parameters(ThreadedAssociationServer.__init__), UPGRADE
    assoc = Association(ae, "acceptor")
    assert isinstance(getattr(assoc.dul, "_run_loop_delay", None), float), UPGRADE
    assert isinstance(getattr(assoc, "_accepted_cx", None), dict), UPGRADE
    assert isinstance(getattr(assoc, "_sent_release", None), bool), UPGRADE
    assert isinstance(getattr(assoc, "_is_paused", None), bool), UPGRADE
    assert parameters(Association._serve_request) == ["self", "msg", "context_id"], UPGRADE
    assert isinstance(assoc.dimse, DIMSEServiceProvider), UPGRADE
    assert hasattr(assoc.dimse, "message") and hasattr(assoc.dimse, "cancel_req"), UPGRADE
    assert parameters(DIMSEServiceProvider.receive_primitive) == ["self", "primitive"], UPGRADE
    message = DIMSEMessage()
    for name in ("_data_set_path", "_data_set_file", "encoded_command_set"):
        assert hasattr(message, name), f"DIMSEMessage.{name}: {UPGRADE}"
    assert parameters(RequestHandler._create_association) == ["self"], UPGRADE
    assert parameters(AssociationSocket.recv) == ["self", "nr_bytes"], UPGRADE
    assert parameters(StorageServiceClass.SCP)[:3] == ["self", "req", "context"], UPGRADE
    assert parameters(decode)[:3] == ["bytestring", "is_implicit_vr", "is_little_endian"], UPGRADE
    assert parameters(encode)[:3] == ["ds", "is_implicit_vr", "is_little_endian"], UPGRADE
    # ReactorClock: the reactor's poll, the only use of `time` in pynetdicom.association
    source = inspect.getsource(pynetdicom.association)
    assert set(re.findall(r"\btime\.(\w+)", source)) == {"sleep"}, UPGRADE
    reactor = inspect.getsource(Association._run_reactor)
    assert f"time.sleep({REACTOR_POLL_S})" in reactor, UPGRADE
    assert "self.dimse.get_msg(block=False)" in reactor, UPGRADE
    assert isinstance(assoc.dimse.msg_queue, queue.Queue), UPGRADE
    # DULClock: the DUL reactor's idle sleep, the only use of `time` in pynetdicom.dul
    assert set(re.findall(r"\btime\.(\w+)", inspect.getsource(pynetdicom.dul))) == {"sleep"}
    dul_reactor = inspect.getsource(type(assoc.dul).run_reactor)
    assert "time.sleep(self._run_loop_delay)" in dul_reactor, UPGRADE
    assert isinstance(assoc.dul.to_provider_queue, queue.Queue), UPGRADE
    assert assoc.dul.assoc is assoc and hasattr(assoc.dul, "socket"), UPGRADE


class _Server(ThreadedAssociationServer):
    pdu_limit = 1 << 20
    inspect_requests = False

    def prepare_association(self, assoc: Association) -> None:
        if self.inspect_requests:
            check_store_requests(assoc, _every_instance_uid_refused)
        bound_pdu_reads(assoc, self.pdu_limit)


@dataclass(frozen=True)
class _Problem:
    replaced: tuple[str, ...] = ("AffectedSOPInstanceUID",)


def _every_instance_uid_refused(_command_set: Dataset, abstract_syntax: str | None) -> _Problem:
    assert abstract_syntax == SecondaryCaptureImageStorage
    return _Problem()


@dataclass
class _Seen:
    idle_sleep: list[float]
    partial_files: list[Path]
    dataset_paths: list[Path]
    problems: list[object]
    requested_instances: list[object]
    socket_classes: list[type]


@pytest.fixture
def served() -> Iterator[tuple[_Server, _Seen]]:
    stream_data_sets_to_disk()
    seen = _Seen([], [], [], [], [], [])

    def on_requested(event: evt.Event) -> None:
        set_idle_sleep(event.assoc, 0.002)
        seen.idle_sleep.append(event.assoc.dul._run_loop_delay)
        seen.socket_classes.append(type(event.assoc.dul.socket))

    def on_pdu(event: evt.Event) -> None:
        message = message_being_received(event.assoc)
        path = None if message is None else data_set_path(message)
        if path is not None and path.exists() and path not in seen.partial_files:
            seen.partial_files.append(path)

    def on_store(event: evt.Event) -> int:
        seen.dataset_paths.append(Path(event.dataset_path))
        seen.problems.append(held_problem(event.request))
        seen.requested_instances.append(event.request.AffectedSOPInstanceUID)
        return 0xC001 if seen.problems[-1] is not None else 0x0000

    ae = AE(ae_title="PATCHED")
    ae.maximum_pdu_size = 16384
    ae.add_supported_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    server = ae.make_server(
        ("127.0.0.1", 0),
        evt_handlers=[
            (evt.EVT_REQUESTED, on_requested),
            (evt.EVT_PDU_RECV, on_pdu),
            (evt.EVT_C_STORE, on_store),
            (evt.EVT_ABORTED, lambda event: discard_partial_data_set(event.assoc)),
            (evt.EVT_CONN_CLOSE, lambda event: discard_partial_data_set(event.assoc)),
        ],
        server_class=_Server,
        request_handler=PreparingRequestHandler,
    )
    assert isinstance(server, _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    register_server(ae, server)
    try:
        yield server, seen
    finally:
        ae.shutdown()  # stops the server too: register_server
        _config.STORE_RECV_CHUNKED_DATASET = False
        assert ae._servers == [], UPGRADE


def _image(size: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.BitsAllocated = 8
    ds.PixelData = bytes(size)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _associate(server: _Server) -> Association:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    ae.dimse_timeout = 2
    assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="PATCHED")
    assert assoc.is_established, UPGRADE
    return assoc


def test_a_store_streams_to_disk_through_a_bounded_socket(served: tuple[_Server, _Seen]) -> None:
    server, seen = served
    assoc = _associate(server)
    status = assoc.send_c_store(_image(100_000))
    assoc.release()
    assert status.Status == 0x0000, UPGRADE
    assert seen.idle_sleep == [0.002], UPGRADE
    assert seen.socket_classes == [BoundedSocket], UPGRADE
    assert len(seen.dataset_paths) == 1, UPGRADE  # streamed: the handler had a file
    assert seen.partial_files == seen.dataset_paths, UPGRADE  # seen while it arrived
    assert seen.problems == [None]


def test_a_pdu_over_the_limit_ends_the_connection(served: tuple[_Server, _Seen]) -> None:
    server, seen = served
    server.pdu_limit = 4096  # the peer sends P-DATA PDUs of 16 KiB
    assoc = _associate(server)
    status = assoc.send_c_store(_image(100_000))
    assert not status, UPGRADE  # no response: the node closed the connection
    assert seen.dataset_paths == [], UPGRADE


def test_a_checked_request_is_served_with_its_problem(served: tuple[_Server, _Seen]) -> None:
    server, seen = served
    server.inspect_requests = True
    assoc = _associate(server)
    status = assoc.send_c_store(_image(1000))
    assoc.release()
    assert status.Status == 0xC001, UPGRADE
    assert seen.problems == [_Problem()], UPGRADE
    assert seen.requested_instances == [None], UPGRADE  # the placeholder was taken out


def test_an_aborted_transfer_leaves_no_partial_file(served: tuple[_Server, _Seen]) -> None:
    server, seen = served
    assoc = _associate(server)
    send, sent = assoc.dul.socket.send, [0]

    def send_at_most_1_mb(pdu: bytes) -> None:  # P-DATA after the first MB is never sent
        if pdu[:1] == b"\x04":
            if sent[0] > 1 << 20:
                return
            sent[0] += len(pdu)
        send(pdu)

    assoc.dul.socket.send = send_at_most_1_mb  # type: ignore[method-assign]
    sender = threading.Thread(target=assoc.send_c_store, args=(_image(4 << 20),), daemon=True)
    sender.start()
    deadline = time.monotonic() + 30
    while not seen.partial_files:
        assert time.monotonic() < deadline, UPGRADE
        time.sleep(0.01)
    assoc.abort()
    sender.join(30)
    deadline = time.monotonic() + 5
    while seen.partial_files[0].exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not seen.partial_files[0].exists(), UPGRADE
    assert seen.dataset_paths == []


def test_the_scu_overrides_still_fit() -> None:
    # ReportingAE / ReportingSocket (the SCU) override two private socket factories and read the
    # socket's connection flag.
    assert parameters(AE._create_socket) == ["self", "assoc", "address", "tls_args"], UPGRADE
    assert parameters(AssociationSocket._create_socket) == ["self", "address"], UPGRADE
    assert "_is_connected" in inspect.getsource(AssociationSocket.__init__), UPGRADE
    assert "tls_args" in inspect.getsource(AssociationSocket.__init__), UPGRADE


def test_a_checked_reactor_wakes_when_a_message_is_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ReactorClock, "longest_wait_s", 600.0)  # far longer than the join below
    assoc = Association(AE(), "acceptor")
    check_store_requests(assoc, lambda _command_set, _syntax: None)
    assoc.run = lambda: ReactorClock.sleep(REACTOR_POLL_S)  # type: ignore[method-assign]
    assoc.start()
    while not assoc.dimse.msg_queue.not_empty._waiters:  # type: ignore[attr-defined]
        threading.Event().wait(0.01)  # the reactor is waiting now
    assoc.dimse.msg_queue.put((1, DIMSEMessage()))
    assoc.join(timeout=60)
    assert not assoc.is_alive()  # woken by the message, not after 600 s


def _waiting(condition: Any) -> None:
    while not condition._waiters:  # the thread under test waits on it now
        threading.Event().wait(0.01)


def test_a_checked_dul_wakes_for_a_response_to_send_and_for_data_from_the_peer() -> None:
    assoc = Association(AE(), "acceptor")
    check_store_requests(assoc, lambda _command_set, _syntax: None)
    dul = assoc.dul
    assoc.serving = True  # type: ignore[attr-defined]
    dul.run = lambda: DULClock.sleep(600.0)  # type: ignore[method-assign]
    dul.start()
    _waiting(dul.to_provider_queue.not_empty)
    dul.to_provider_queue.put(P_DATA())
    dul.join(timeout=60)
    assert not dul.is_alive()  # woken by the response, not after 600 s

    ours, peer = socket.socketpair()
    assoc = Association(AE(), "acceptor")
    check_store_requests(assoc, lambda _command_set, _syntax: None)
    assoc.dul.socket = AssociationSocket(assoc, client_socket=ours)
    assoc.dul.run = lambda: DULClock.sleep(600.0)  # type: ignore[method-assign]
    assoc.dul.start()
    peer.sendall(b"\x05")
    assoc.dul.join(timeout=60)
    assert not assoc.dul.is_alive()  # woken by the peer's data
    ours.close()
    peer.close()
