"""The receiving application entity: C-ECHO and C-STORE over pynetdicom.

This module is the server: the AE and its presentation contexts, the association events (peer
address checks, partial data sets removed on abort), a threaded server whose TLS handshakes run
off the accepting thread, and a graceful stop. Each C-STORE goes to node/receive/store_handler.py, whose
docstring lists the statuses (also in docs/ingest.md). What the node changes in pynetdicom:
node/pynetdicom_patches/.

While a data set is still arriving, ``StoreSCP.studies_in_flight`` tells which study it belongs
to, so that node/receive/holds.py can keep that study from completing before the image is stored.
How each association of a release-trigger sender ends (released, aborted, connection lost) goes to
node/receive/associations.py.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
import time
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node.config import DicomConfig
from node.errors import ListenError
from node.profiles import StorageProfile
from node.pynetdicom_patches import (
    PreparingRequestHandler,
    blank_titles,
    bound_pdu_reads,
    decode_blank_titles,
    discard_partial_data_set,
    register_server,
    set_idle_sleep,
    stream_data_sets_to_disk,
)
from node.receive.scp_requests import check_requests
from node.receive.store_handler import StoreHandler
from node.tls import server_context

__all__ = ["AssociationServer", "StoreHandler", "StoreSCP", "build_ae"]

log = logging.getLogger(__name__)

MIN_PDU_LIMIT = 1 << 20


def build_ae(config: DicomConfig, profile: StorageProfile) -> AE:
    """An AE that accepts Verification and the profile's storage SOP classes."""
    stream_data_sets_to_disk()  # never whole in memory
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
    """A data set cut off by an abort or a dropped connection: its temporary file goes now."""
    discard_partial_data_set(event.assoc)


# A-ASSOCIATE-RJ (PS3.8 9.3.4): source 1 (service user) and its reasons; source 3 (service
# provider, presentation related) reason 2. An association rejection is recorded with the rejected
# C-STOREs (`status`) as (source << 8) | reason, e.g. 0x0107: there is no DIMSE status for it.
CALLING_NOT_RECOGNISED = (0x01, 0x01, 0x03)
CALLED_NOT_RECOGNISED = (0x01, 0x01, 0x07)
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


def rejection_reason(assoc: Association) -> tuple[tuple[int, int, int] | None, str]:
    """Why pynetdicom rejected ``assoc`` (its ACSE checks, in its order: the last one found
    wins): the A-ASSOCIATE-RJ (result, source, reason), or None when not known, and a line."""
    ae = assoc.ae
    request = assoc.requestor.primitive
    called = "" if request is None else str(request.called_ae_title).strip()
    calling = "" if request is None else str(request.calling_ae_title).strip()
    active = [a for a in ae.active_associations if a.is_acceptor]
    if len(active) > ae.maximum_associations:
        return LOCAL_LIMIT_EXCEEDED, f"too many associations (at most {ae.maximum_associations})"
    if ae.require_called_aet and called != str(ae.ae_title).strip():
        return CALLED_NOT_RECOGNISED, f"called AE title {called!r} is not {ae.ae_title!r}"
    if ae.require_calling_aet and calling not in [t.strip() for t in ae.require_calling_aet]:
        return (
            CALLING_NOT_RECOGNISED,
            f"calling AE title {calling!r} is not in dicom.accepted_calling_ae_titles",
        )
    return None, "no reason given (user identity)"


class AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved off the accepting thread.

    pynetdicom wraps each accepted socket and completes the handshake in ``get_request``, on the
    one thread that accepts connections: a client that opens TCP and never sends its TLS hello
    stalls every other connection until the socket times out. Here the accepting thread only
    wraps the socket; the handshake runs on the connection's own thread, bounded by
    ``handshake_timeout_s``, and a failed handshake closes that connection alone."""

    handshake_timeout_s = 10.0
    pdu_limit = MIN_PDU_LIMIT

    def prepare_association(self, assoc: Association) -> None:
        """Before a new association starts: its C-STORE requests are checked
        (node/receive/scp_requests.py) and its PDUs bounded by ``pdu_limit`` bytes."""
        check_requests(assoc)
        bound_pdu_reads(assoc, self.pdu_limit)
        decode_blank_titles(assoc)

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

    def _reject(
        self, assoc: Association, calling: str, rsd: tuple[int, int, int] | None, why: str
    ) -> None:
        """Log a rejected association with why, and record it for `status` with the
        A-ASSOCIATE-RJ ``rsd`` (0 when not known) and the calling AE title ("" when blank)."""
        address = assoc.requestor.address
        log.warning("association rejected from %s (%s): %s", calling or "?", address, why)
        status = 0 if rsd is None else (rsd[1] << 8) | rsd[2]
        self.handler.records.record_rejection(calling, status, f"association rejected: {why}")

    def _on_rejected(self, event: evt.Event) -> None:
        # pynetdicom has sent the A-ASSOCIATE-RJ; its reason is found again here
        rsd, why = rejection_reason(event.assoc)
        self._reject(event.assoc, str(event.assoc.requestor.ae_title).strip(), rsd, why)

    def _on_requested(self, event: evt.Event) -> None:
        # pynetdicom's network thread sleeps this long when it finds nothing to do; shorter
        # means less latency per message and more CPU while an association is idle.
        set_idle_sleep(event.assoc, self.config.poll_interval_s)
        request = event.assoc.requestor.primitive
        if request is None:
            return
        blank = blank_titles(event.assoc)
        if blank:
            # PS3.8 9.3.2: 16 spaces is no AE title (node/pynetdicom_patches/titles.py)
            rsd = CALLED_NOT_RECOGNISED if blank == ("called",) else CALLING_NOT_RECOGNISED
            self._refuse(event.assoc, "", rsd, f"{' and '.join(blank)} AE title is blank")
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
            why = f"calling AE title {calling!r} is not allowed from this address"
            self._refuse(event.assoc, calling, CALLING_NOT_RECOGNISED, why)

    def _refuse(
        self, assoc: Association, calling: str, rsd: tuple[int, int, int], why: str
    ) -> None:
        """Reject a requested association with A-ASSOCIATE-RJ ``rsd``; log and record it."""
        self._reject(assoc, calling, rsd, why)
        assoc.acse.send_reject(*rsd)
        assoc.kill()

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self.handler),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, _on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, _remove_partial_data_set),
            (evt.EVT_CONN_CLOSE, _remove_partial_data_set),
        ]
        associations = self.handler.associations
        if associations is not None and associations.release_trigger_aes:
            handlers += [
                (evt.EVT_RELEASED, associations.on_released),
                (evt.EVT_ABORTED, associations.on_aborted),
                (evt.EVT_CONN_CLOSE, associations.on_connection_closed),
            ]
        address = (self.config.host, self.config.port)
        try:
            server = self.ae.make_server(
                address,
                evt_handlers=handlers,
                ssl_context=self.ssl_context,
                server_class=AssociationServer,
                request_handler=PreparingRequestHandler,
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
        register_server(self.ae, server)
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
