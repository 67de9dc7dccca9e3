"""Protocol and association abuse: presentation contexts the node does not accept, stalled
associations, an oversized PDU before any association, a transfer aborted half way."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from node.pynetdicom_patches import files_sent_as_written
from tests.support.factory import CR
from tests.support.hostile import of, part10, radiograph
from tests.support.hostile_node import (
    MEMORY_BOUND,
    PeakMemory,
    Running,
    assert_files_in_place,
    assert_still_serving,
    expected_thread_deaths,
    instance,
    sizes,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")


def test_unsupported_syntaxes_and_classes_are_refused_at_negotiation(running: Running) -> None:
    for sop_class, syntax in [
        (CR, "1.2.840.10008.1.2.4.110"),  # JPEG XL: not in the profile
        (CR, "1.2.840.10008.1.2.2"),  # Explicit VR Big Endian (retired)
        ("1.2.3.4.5.6.7", ExplicitVRLittleEndian),  # a made-up SOP class
    ]:
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate("127.0.0.1", running.node.scp.port, ae_title="MURA_NODE")
        assert not assoc.is_established  # no acceptable presentation context: rejected
        assert_still_serving(running)
    assert_files_in_place(running)


def test_stalled_association_does_not_hold_up_others(running: Running) -> None:
    ae = AE(ae_title="STALLED")
    ae.add_requested_context(CR, ExplicitVRLittleEndian)
    stalled = ae.associate("127.0.0.1", running.node.scp.port, ae_title="MURA_NODE")
    silent = socket.create_connection(("127.0.0.1", running.node.scp.port))  # TCP only
    try:
        assert stalled.is_established  # and then sends nothing
        assert_still_serving(running)
    finally:
        stalled.abort()
        silent.close()
    assert_files_in_place(running)


def test_oversized_pdu_keeps_memory_bounded(running: Running) -> None:
    # pynetdicom/pydicom alone: pynetdicom reads a whole PDU into memory before it looks at it, whatever
    # length the peer writes in its header (DULServiceProvider._read_pdu_data ->
    # AssociationSocket.recv(pdu_length)), even before any association: a client that connects
    # and sends 150 MB as one P-DATA-TF PDU costs the SCP 300 MB (the bytes, then a copy), up to
    # 8 GiB per connection. node/receive/scp.py therefore: pass make_server a request_handler whose
    # _create_association gives the association an AssociationSocket subclass whose
    # recv(nr_bytes) raises OSError when nr_bytes is more than max(dicom.maximum_pdu_size,
    # 1 MiB) (the DUL then treats the connection as closed and the association ends).
    n = 150 << 20
    address = ("127.0.0.1", running.node.scp.port)
    with PeakMemory() as memory, socket.create_connection(address) as peer:
        peer.settimeout(30)
        peer.sendall(struct.pack(">BBL", 0x04, 0, n))  # P-DATA-TF, before any association
        chunk, sent = bytes(1 << 20), 0
        try:
            while sent < n:
                peer.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the node closed the connection: what it should do
        with contextlib.suppress(OSError):
            peer.recv(64)  # wait for the node's A-ABORT, or for it to close the connection
    assert memory.growth < MEMORY_BOUND, f"peak memory grew by {memory.growth >> 20} MiB"
    assert_still_serving(running)
    assert_files_in_place(running)


def test_aborted_transfer_leaves_no_partial_file(running: Running) -> None:
    # pynetdicom/pydicom alone: pynetdicom streams a data set into a temporary file and deletes it only after
    # the C-STORE handler ran; an association aborted (or a connection dropped) in the middle of
    # a data set leaves the partial file in <data_dir>/tmp until the node restarts, so a peer can
    # fill the disk by sending most of a large data set and aborting, again and again. Therefore
    # node/receive/scp.py: bind a handler to evt.EVT_CONN_CLOSE (and evt.EVT_ABORTED) in StoreSCP.start
    # that closes and unlinks event.assoc.dimse.message._data_set_file when it is set.
    node = running.node
    big = radiograph()
    big.Rows = big.Columns = 2000
    big.PixelData = bytes(2000 * 2000 * 2)  # 8 MB, of which only the first 2 MB ever leave
    path = running.inputs / "big.dcm"
    path.write_bytes(part10(of(big)))
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(CR, ExplicitVRLittleEndian)
    ae.dimse_timeout = 1  # the aborted sender stops waiting for a response soon
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="MURA_NODE", max_pdu=16384)
    assert assoc.is_established
    # The sender's P-DATA-TF PDUs after the first 2 MB are never sent (other PDUs are), so the
    # abort always comes in the middle of the data set, however busy the machine is.
    send, sent = assoc.dul.socket.send, [0]

    def send_at_most_2_mb(pdu: bytes) -> None:
        if pdu[:1] == b"\x04":
            if sent[0] > 2 << 20:
                return
            sent[0] += len(pdu)
        send(pdu)

    assoc.dul.socket.send = send_at_most_2_mb  # type: ignore[method-assign]
    sender = threading.Thread(target=assoc.send_c_store, args=(path,))
    with files_sent_as_written(), expected_thread_deaths():
        sender.start()
        deadline = time.monotonic() + 30
        while not any(size > 1 << 20 for size in sizes(node.store.tmp)):
            assert time.monotonic() < deadline, "the data set never started to arrive"
            time.sleep(0.01)
        assoc.abort()
        sender.join(30)
    deadline = time.monotonic() + 5
    while list(node.store.tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(node.store.tmp.iterdir()) == []
    assert instance(node, str(big.SOPInstanceUID)) is None
    assert_still_serving(running)
    assert_files_in_place(running)
