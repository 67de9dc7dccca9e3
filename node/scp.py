"""The receiving application entity: C-ECHO and C-STORE over pynetdicom.

C-STORE statuses (also in docs/ingest.md):

======  ============================================================================
0x0000  stored durably (file fsynced and linked, directory fsynced, row committed), or a byte-identical re-send,
        or an object of an ignored SOP class (recorded, bytes not kept)
0xA700  out of resources: the data set is larger than ``dicom.max_dataset_bytes``, the data
        directory's free space is below ``storage.min_free_bytes``, or the file or its database row
        could not be made durable (nothing kept in any case)
0xA900  the data set's SOPClassUID / SOPInstanceUID differ from the C-STORE request
0xC000  the data set cannot be parsed
0xC001  a required identifier (Study, Series or SOP Instance UID in the data set, or the
        request's Affected SOP Class or Instance UID: node/scp_requests.py) is missing or not a UID
======  ============================================================================

The handler parses the header only (``stop_before_pixels``): no pixel decoding, no inference.
Data sets are received with pynetdicom's streamed mode (``STORE_RECV_CHUNKED_DATASET``), which
writes the incoming bytes to a temporary file instead of memory, so a large image is never held
whole in memory; the store then adopts that file (see node/storage.py).

While a data set is still arriving, ``StoreSCP.studies_in_flight`` tells which study it belongs
to (read from the part already received), so that node/holds.py can keep that study from
completing before the image is stored. Reading headers, whole or in part: node/headers.py.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from node import metrics
from node.config import DicomConfig
from node.errors import (
    DatasetMismatch,
    InvalidIdentifier,
    ListenError,
    OutOfResources,
    UnreadableDataset,
)
from node.headers import Header, header_of, study_of_partial_data_set
from node.ingest import IngestOutcome, IngestRecords, InstanceRecord
from node.profiles import Role, StorageProfile
from node.scp_requests import check_requests, request_problem
from node.storage import FileStore
from node.tls import server_context

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
MISMATCH = 0xA900
CANNOT_PARSE = 0xC000
BAD_IDENTIFIER = 0xC001

MIN_PDU_LIMIT = 1 << 20


@dataclass
class _Transfer:
    """What the node knows about the data sets of one association."""

    last_study: str | None = None  # StudyInstanceUID of the last instance stored on it
    storing: str | None = None  # that of the data set the C-STORE handler is storing now


class Transfers:
    """Which studies have a data set in flight, over the associations of one SCP.

    A data set is in flight from its first P-DATA fragment until the C-STORE handler has answered
    it. Its study is the StudyInstanceUID in the part received so far; until that part holds it
    (the first fragments), that of the last instance stored on the same association.

    Relies on pynetdicom 3.0.4: ``assoc.dimse.message`` is the DIMSE message being assembled from
    P-DATA (``DIMSEServiceProvider.receive_primitive``), not None from its first fragment until the
    last one has been decoded; with ``_config.STORE_RECV_CHUNKED_DATASET`` a C-STORE-RQ's data set
    is written, as it arrives, to the temporary file ``message._data_set_path`` (File Meta first).
    The complete message then waits in the association's queue (milliseconds) for EVT_C_STORE,
    whose handler reports here what it stores (``storing``, ``stored``, ``finished``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_association: weakref.WeakKeyDictionary[Association, _Transfer] = (
            weakref.WeakKeyDictionary()
        )

    def _transfer(self, assoc: Association) -> _Transfer:
        transfer = self._by_association.get(assoc)
        if transfer is None:
            transfer = self._by_association[assoc] = _Transfer()
        return transfer

    def storing(self, assoc: Association, study_instance_uid: str) -> None:
        with self._lock:
            self._transfer(assoc).storing = study_instance_uid

    def stored(self, assoc: Association, study_instance_uid: str) -> None:
        with self._lock:
            self._transfer(assoc).last_study = study_instance_uid

    def finished(self, assoc: Association) -> None:
        with self._lock:
            self._transfer(assoc).storing = None

    def studies_in_flight(self, associations: Iterable[Association]) -> set[str]:
        """The StudyInstanceUIDs of the data sets in flight on ``associations`` (an idle
        association contributes nothing)."""
        found = set()
        for assoc in associations:
            with self._lock:
                transfer = self._transfer(assoc)
                storing, last = transfer.storing, transfer.last_study
            message = getattr(getattr(assoc, "dimse", None), "message", None)
            if storing is not None:
                found.add(storing)
            if message is not None:  # the next data set may arrive while the handler stores
                path = getattr(message, "_data_set_path", None)
                study = None if path is None else study_of_partial_data_set(Path(path))
                if study or last:
                    found.add(cast(str, study or last))
        return found


class StoreHandler:
    """EVT_C_STORE: durable store, then database row, then success; statuses for everything else."""

    def __init__(
        self,
        store: FileStore,
        repository: IngestRecords,
        profile: StorageProfile,
        threads: int = 16,
        *,
        max_dataset_bytes: int = 0,
        min_free_bytes: int = 0,
    ) -> None:
        self.store = store
        self.repository = repository
        self.profile = profile
        self.max_dataset_bytes = max_dataset_bytes
        self.min_free_bytes = min_free_bytes
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="durable")
        self.transfers = Transfers()

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def __call__(self, event: evt.Event) -> Dataset:
        try:
            return self._answer(event)
        finally:
            self.transfers.finished(event.assoc)

    def _answer(self, event: evt.Event) -> Dataset:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            return _status(SUCCESS, self._store(event, calling))
        except DatasetMismatch as exc:
            return self._reject(calling, MISMATCH, str(exc))
        except InvalidIdentifier as exc:
            return self._reject(calling, BAD_IDENTIFIER, str(exc))
        except UnreadableDataset as exc:
            return self._reject(calling, CANNOT_PARSE, str(exc))
        except OutOfResources as exc:
            return self._reject(calling, OUT_OF_RESOURCES, str(exc))
        except Exception:
            log.exception("unexpected error while storing an instance")
            return self._reject(calling, OUT_OF_RESOURCES, "internal error while storing")

    def _reject(self, calling: str, code: int, reason: str) -> Dataset:
        metrics.instance_received(f"refused 0x{code:04X}")
        log.warning("C-STORE from %s refused with 0x%04X: %s", calling, code, reason)
        self.repository.record_rejection(calling, code, reason)
        return _status(code, reason)

    def _store(self, event: evt.Event, calling: str) -> str | None:
        problem = request_problem(event)  # Affected SOP Class / Instance UID missing or invalid
        if problem is not None:
            raise (DatasetMismatch if problem.mismatch else InvalidIdentifier)(problem.comment)
        request = cast(C_STORE, event.request)
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        role = self.profile.role(sop_class)
        if role is None:  # cannot happen with the negotiated contexts; kept as a guard
            raise DatasetMismatch(f"SOP class {sop_class} is not accepted")
        source = event.dataset_path  # pynetdicom's complete Part 10 file of what arrived
        self._check_resources(source)
        relative = self.store.new_name() if role is Role.ANALYSE else None
        # Making the file durable (fsync, link, fsync directory) runs on a helper thread while
        # this one parses the header and writes the row; the row commits only after the file
        # is durable, and the status is sent only after both.
        durable = None if relative is None else self.pool.submit(self.store.adopt, source, relative)
        try:
            header = header_of(source, sop_class, sop_instance)
            if role is Role.ANALYSE and header.series_instance_uid is None:
                # Type 1 in every image IOD; the results must name the image's series.
                raise InvalidIdentifier("series_instance_uid is missing")
            self.transfers.storing(event.assoc, header.study_instance_uid)
            record = _record(header, role, str(event.context.transfer_syntax), source, calling)
            same: Callable[[str | None], bool] = (
                (lambda _stored: True)  # ignored objects are not kept: a re-send is a no-op
                if relative is None
                else (lambda stored: self.store.same_content(stored, source))
            )
            try:
                result = self.repository.record_instance(
                    record, relative, same, before_commit=lambda: durable and durable.result()
                )
            except SQLAlchemyError as exc:
                raise OutOfResources(f"database error: {exc.__class__.__name__}") from exc
            if durable is not None:
                durable.result()
        except BaseException:
            if durable is not None and relative is not None:
                wait([durable])
                self.store.remove(relative)
            raise
        self.transfers.stored(event.assoc, header.study_instance_uid)
        metrics.instance_received(str(result.outcome) if role is Role.ANALYSE else "ignored")
        if result.outcome is IngestOutcome.DUPLICATE:
            if relative is not None:
                self.store.remove(relative)
            log.debug("C-STORE from %s: identical re-send", calling)
            return "identical instance already stored"
        if result.obsolete_file:
            self.store.remove(result.obsolete_file)
        log.debug("C-STORE from %s: %s (%s)", calling, result.outcome, role)
        return None

    def _check_resources(self, source: Path) -> None:
        """Refuse, before anything is written, a data set over the size limit or a store whose
        free space is below the floor (the check runs for every C-STORE, so storing resumes by
        itself once space is freed)."""
        size = source.stat().st_size
        if self.max_dataset_bytes and size > self.max_dataset_bytes:
            raise OutOfResources(f"data set over the maximum size ({self.max_dataset_bytes} bytes)")
        if self.min_free_bytes and self.store.free_bytes() - size < self.min_free_bytes:
            raise OutOfResources("storage nearly full: below the node's free-space floor")


def _record(
    header: Header, role: Role, transfer_syntax: str, source: Path, calling: str
) -> InstanceRecord:
    return InstanceRecord(
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        role=role,
        transfer_syntax_uid=transfer_syntax,
        size_bytes=source.stat().st_size,
        calling_ae_title=calling[:16],
        modality=header.modality,
        body_part_examined=header.body_part_examined,
        protocol_name=header.protocol_name,
        series_description=header.series_description,
        study_description=header.study_description,
        anatomic_region=header.anatomic_region,
    )


def _status(code: int, comment: str | None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]
    return status


def build_ae(config: DicomConfig, profile: StorageProfile) -> AE:
    """An AE that accepts Verification and the profile's storage SOP classes."""
    _config.STORE_RECV_CHUNKED_DATASET = True  # stream data sets to disk, never whole in memory
    ae = AE(ae_title=config.ae_title)
    ae.maximum_associations = config.max_associations
    ae.maximum_pdu_size = config.maximum_pdu_size
    ae.acse_timeout = config.acse_timeout_s
    ae.dimse_timeout = config.dimse_timeout_s
    ae.network_timeout = config.network_timeout_s
    ae.require_called_aet = config.require_called_ae_title
    ae.require_calling_aet = list(config.accepted_calling_ae_titles)
    ae.add_supported_context(Verification)
    for sop_class in profile.sop_classes:
        ae.add_supported_context(sop_class, list(profile.transfer_syntaxes))
    return ae


def _on_accepted(event: evt.Event) -> None:
    log.info(
        "association accepted from %s (%s)",
        event.assoc.requestor.ae_title,
        event.assoc.requestor.address,
    )


def _remove_partial_data_set(event: evt.Event) -> None:
    """A data set cut off by an abort or a dropped connection stays in pynetdicom's temporary
    file, which only a completed C-STORE removes; remove it now, or repeated aborts fill the disk."""
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    handle = getattr(message, "_data_set_file", None)
    if handle is None:
        return
    try:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove a partial data set: %s", exc)


def _on_rejected(event: evt.Event) -> None:
    log.warning(
        "association rejected from %s (%s)",
        event.assoc.requestor.ae_title,
        event.assoc.requestor.address,
    )


class _BoundedSocket(AssociationSocket):
    """pynetdicom reads a whole PDU into memory, whatever length the peer announces (up to
    4 GiB, even before an association exists). A PDU over the limit ends the connection."""

    limit = MIN_PDU_LIMIT

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self.limit:
            raise OSError(f"the peer announced a PDU of {nr_bytes} bytes (limit {self.limit})")
        return super().recv(nr_bytes)


class _BoundedRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        check_requests(assoc)
        socket_ = assoc.dul.socket
        if socket_ is not None:
            socket_.__class__ = _BoundedSocket
            cast(_BoundedSocket, socket_).limit = getattr(self.server, "pdu_limit", MIN_PDU_LIMIT)
        return assoc


class AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved off the accepting thread.

    pynetdicom wraps each accepted socket and completes the handshake in ``get_request``, on the
    one thread that accepts connections: a client that opens TCP and never sends its TLS hello
    stalls every other connection until the socket times out. Here the accepting thread only
    wraps the socket; the handshake runs on the connection's own thread, bounded by
    ``handshake_timeout_s``, and a failed handshake closes that connection alone."""

    handshake_timeout_s = 10.0
    pdu_limit = MIN_PDU_LIMIT

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            previous = request.gettimeout()
            try:
                request.settimeout(self.handshake_timeout_s)
                request.do_handshake()
                request.settimeout(previous)
            except (OSError, ssl.SSLError) as exc:
                log.warning(
                    "TLS handshake with %s failed: %s",
                    client_address[0],
                    getattr(exc, "reason", None) or exc.__class__.__name__,
                )
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


class StoreSCP:
    """The running server: start, then stop gracefully."""

    def __init__(self, config: DicomConfig, profile: StorageProfile, handler: StoreHandler) -> None:
        self.config = config
        self.ae = build_ae(config, profile)
        self.handler = handler
        self.ssl_context = server_context(config)
        self.peer_networks = {
            title: [ipaddress.ip_network(a, strict=False) for a in addresses]
            for title, addresses in config.peer_addresses.items()
        }
        self.server: ThreadedAssociationServer | None = None

    def _on_requested(self, event: evt.Event) -> None:
        # pynetdicom's network thread sleeps this long when it finds nothing to do; shorter
        # means less latency per message and more CPU while an association is idle.
        event.assoc.dul._run_loop_delay = self.config.poll_interval_s
        request = event.assoc.requestor.primitive
        if request is None:
            return
        calling = str(request.calling_ae_title).strip()
        networks = self.peer_networks.get(calling)
        if networks is None:
            return
        address = event.assoc.requestor.address
        try:
            allowed = any(ipaddress.ip_address(address) in network for network in networks)
        except ValueError:
            allowed = False
        if not allowed:
            # Rejected permanent, by the service user: calling AE title not recognised
            # (the title is not recognised from this address).
            log.warning("association rejected: %s is not allowed from %s", calling, address)
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)
            event.assoc.kill()

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self.handler),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, _on_accepted),
            (evt.EVT_REJECTED, _on_rejected),
            (evt.EVT_ABORTED, _remove_partial_data_set),
            (evt.EVT_CONN_CLOSE, _remove_partial_data_set),
        ]
        address = (self.config.host, self.config.port)
        try:
            server = self.ae.make_server(
                address,
                evt_handlers=handlers,
                ssl_context=self.ssl_context,
                server_class=AssociationServer,
                request_handler=_BoundedRequestHandler,
            )
        except OSError as exc:
            raise ListenError(
                f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}"
            ) from None
        assert isinstance(server, AssociationServer)
        server.handshake_timeout_s = self.config.tls_handshake_timeout_s
        # Peers must keep to the PDU size the node advertises; the 1 MiB floor (256 MiB when
        # unlimited) leaves room for peers that round it up.
        advertised = self.config.maximum_pdu_size or 256 * MIN_PDU_LIMIT
        server.pdu_limit = max(advertised + 6, MIN_PDU_LIMIT)
        threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True).start()
        self.ae._servers.append(server)
        self.server = server

    def studies_in_flight(self) -> set[str]:
        """The StudyInstanceUIDs of the data sets being received now (see Transfers)."""
        server = self.server
        if server is None:
            return set()
        return self.handler.transfers.studies_in_flight(server.active_associations)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def stop(self, grace_period_s: float) -> int:
        """Stop accepting, let established associations finish for up to the grace period, then
        abort the rest. Returns how many associations had to be aborted."""
        server = self.server
        if server is None:
            return 0
        socketserver.BaseServer.shutdown(server)  # end the accept loop
        server.server_close()  # new connections are refused from here on
        deadline = time.monotonic() + grace_period_s
        # Wait for associations that carry work; a connection that never finished negotiating
        # (a port probe, a health check) is not worth delaying shutdown for.
        while time.monotonic() < deadline and any(
            assoc.is_established for assoc in server.active_associations
        ):
            time.sleep(0.05)
        remaining = server.active_associations
        established = [assoc for assoc in remaining if assoc.is_established]
        for assoc in remaining:
            assoc.abort()
        self.ae.shutdown()
        self.server = None
        return len(established)
