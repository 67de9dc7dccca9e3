"""The sending side's changes to pynetdicom (the SCU): why a connection failed; see the
package's docstring."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.transport import (
    T_CONNECT,
    AddressInformation,
    AssociationSocket,
)

log = logging.getLogger(__name__)


@contextmanager
def files_sent_as_written() -> Iterator[None]:
    """pynetdicom's ``send_c_store(path)`` reads the file with pydicom and encodes it again;
    within this block (its process-wide ``_config.STORE_SEND_CHUNKED_DATASET``, read once when
    ``send_c_store`` starts) it sends the file's data set bytes as they are, read in chunks, on a
    presentation context accepted with the file's own transfer syntax (it converts nothing
    then). The setting is put back as it was afterwards."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


class _RemembersConnectError:
    """A socket mixin that remembers why connect() failed (for TLS, connect() includes the
    handshake)."""

    connect_error: OSError | None = None

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)  # type: ignore[misc]
        except OSError as exc:
            self.connect_error = exc
            raise


class _Socket(_RemembersConnectError, socket.socket):
    """A TCP socket that remembers why connect() failed."""


class _TLSSocket(_RemembersConnectError, ssl.SSLSocket):
    """The same for TLS."""


class ReportingSocket(AssociationSocket):
    """The SCU's association socket. pynetdicom logs why a connection failed and drops it; this
    one keeps it (``connect_error``) and whether a connection was ever made (``connected``).
    Relies on ``AssociationSocket._create_socket``, ``tls_args`` and ``_is_connected``."""

    connect_error: OSError | None = None
    connected = False  # whether the connection was ever made (it may be closed again by now)

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        plain = super()._create_socket(address)  # bound, with the network timeout
        timeout = plain.gettimeout()
        sock = _Socket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        sock.settimeout(timeout)
        return sock

    def connect(self, primitive: T_CONNECT) -> None:
        attempted = self.socket
        if self.tls_args and attempted is not None:
            context, hostname = self.tls_args
            context.sslsocket_class = _TLSSocket
            attempted = context.wrap_socket(attempted, server_side=False, server_hostname=hostname)
            self.socket, self.tls_args = attempted, None  # pynetdicom connects what it finds
        super().connect(primitive)
        self.connected = self._is_connected
        if not self.connected:
            self.connect_error = getattr(attempted, "connect_error", None)


class ReportingAE(AE):
    """An AE whose requested associations use `ReportingSocket` (overrides the private
    ``AE._create_socket``)."""

    def _create_socket(
        self,
        assoc: Association,
        address: AddressInformation,
        tls_args: tuple[ssl.SSLContext, str] | None,
    ) -> AssociationSocket:
        sock = ReportingSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock
