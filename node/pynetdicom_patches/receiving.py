"""The receiving side's changes to pynetdicom (the SCP); see the package's docstring."""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom import association as pynetdicom_association
from pynetdicom import dul as pynetdicom_dul
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

log = logging.getLogger(__name__)

PYNETDICOM_CHECKED = "3.0.4"
C_STORE_RQ = 0x0001  # CommandField
PLACEHOLDER = "0"  # a UID value pynetdicom decodes; never answered, never stored
PROBLEM_ATTRIBUTE = "node_request_problem"  # set on a C_STORE primitive whose request is refused


def stream_data_sets_to_disk() -> None:
    """pynetdicom assembles a received data set in memory; with its (process-wide)
    ``_config.STORE_RECV_CHUNKED_DATASET`` it writes the bytes to a temporary Part 10 file as they
    arrive (File Meta first) and hands the handler ``event.dataset_path``, so a large image is
    never held whole in memory."""
    _config.STORE_RECV_CHUNKED_DATASET = True


def set_idle_sleep(assoc: Association, seconds: float) -> None:
    """pynetdicom's DUL reactor sleeps ``_run_loop_delay`` (1 ms) whenever it finds nothing to do;
    shorter means less latency per message and more CPU while an association is idle."""
    assoc.dul._run_loop_delay = seconds


def message_being_received(assoc: Association) -> DIMSEMessage | None:
    """The DIMSE message pynetdicom is assembling from P-DATA on ``assoc``
    (``DIMSEServiceProvider.message``): not None from the first fragment of a message until the
    last one has been decoded, then None while the complete message waits for its handler."""
    dimse = getattr(assoc, "dimse", None)
    message = getattr(dimse, "message", None)
    return message if isinstance(message, DIMSEMessage) else None


def data_set_path(message: DIMSEMessage) -> Path | None:
    """The temporary file a C-STORE-RQ's data set is being written to, as it arrives, in streamed
    mode (``DIMSEMessage._data_set_path``; preamble and File Meta first); None before it exists."""
    path = getattr(message, "_data_set_path", None)
    return Path(path) if isinstance(path, str | Path) else None


def discard_partial_data_set(assoc: Association) -> None:
    """pynetdicom removes its temporary data set file only after a completed C-STORE: a data set
    cut off by an abort or a dropped connection would stay (``DIMSEMessage._data_set_file``), and
    repeated aborts fill the disk. Close and remove it; a failure is logged, never raised."""
    message = message_being_received(assoc)
    handle = getattr(message, "_data_set_file", None)
    if handle is None:
        return
    try:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove a partial data set: %s", exc)


class BoundedSocket(AssociationSocket):
    """pynetdicom reads a whole PDU into memory, whatever length the peer announces (up to
    4 GiB, even before an association exists). Here a PDU over ``limit`` bytes raises OSError,
    which ends the connection."""

    limit = 1 << 20

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self.limit:
            raise OSError(f"the peer announced a PDU of {nr_bytes} bytes (limit {self.limit})")
        return super().recv(nr_bytes)


def bound_pdu_reads(assoc: Association, limit: int) -> None:
    """Make an acceptor association (before it starts) refuse PDUs over ``limit`` bytes: its
    socket, created by pynetdicom's server, becomes a `BoundedSocket` (a ``__class__`` swap)."""
    socket_ = assoc.dul.socket
    if socket_ is not None:
        socket_.__class__ = BoundedSocket
        cast(BoundedSocket, socket_).limit = limit


class PreparingRequestHandler(RequestHandler):
    """pynetdicom's request handler, which starts each association as soon as it has created it
    (``RequestHandler._create_association``); here the server's ``prepare_association(assoc)``,
    when it has one, runs in between."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        prepare = getattr(self.server, "prepare_association", None)
        if prepare is not None:
            prepare(assoc)
        return assoc


def register_server(ae: AE, server: ThreadedAssociationServer) -> None:
    """A server started by the caller (not by ``AE.start_server``) joins ``AE._servers``, so that
    ``AE.shutdown`` stops it too."""
    ae._servers.append(server)


def accepted_context(assoc: Association, context_id: int) -> PresentationContext | None:
    """The accepted presentation context with ``context_id`` (``Association._accepted_cx``)."""
    return assoc._accepted_cx.get(context_id)


class StoreRequestProblem(Protocol):
    """What `check_store_requests` needs of a refused request's problem."""

    @property
    def replaced(self) -> tuple[str, ...]:
        """The command set keywords whose values are replaced by `PLACEHOLDER`."""
        ...


Inspect = Callable[[Dataset, "str | None"], "StoreRequestProblem | None"]


class _CheckedDIMSE(DIMSEServiceProvider):
    """Checks a C-STORE-RQ's command set when its last fragment arrives, before pynetdicom's
    decoding of the message sees it."""

    inspect: Inspect
    problems: dict[int, StoreRequestProblem]

    def receive_primitive(self, primitive: P_DATA) -> None:
        if self.message is None:
            self.message = DIMSEMessage()
        super().receive_primitive(self._checked(self.message, primitive))

    def _checked(self, message: DIMSEMessage, primitive: P_DATA) -> P_DATA:
        items: list[Any] = list(primitive.presentation_data_value_list)  # of [ID, bytes]
        for index, (context_id, data) in enumerate(items):
            if data[0] & 0b11 != 0b11:  # not the last fragment of a command set
                continue
            try:
                encoded = message.encoded_command_set.getvalue() + data[1:]
                command_set = decode(BytesIO(encoded), True, True)
                is_store = command_set.get("CommandField") == C_STORE_RQ
            except Exception:  # pynetdicom's own decoding reports what it cannot read
                return primitive
            context = accepted_context(self.assoc, context_id)
            abstract_syntax = None if context is None else context.abstract_syntax
            problem = self.inspect(command_set, abstract_syntax) if is_store else None
            message_id = command_set.get("MessageID")
            if problem is None or message_id is None:  # without a Message ID, no response
                return primitive
            for keyword in problem.replaced:
                setattr(command_set, keyword, PLACEHOLDER)
            self.problems[int(message_id)] = problem
            message.encoded_command_set = BytesIO()
            items[index] = [context_id, data[:1] + cast(bytes, encode(command_set, True, True))]
            checked = P_DATA()
            checked.presentation_data_value_list = items
            return checked
        return primitive


class _CheckedAssociation(Association):
    """Serves a request with a problem by the Storage service directly (pynetdicom would refuse
    the placeholder's class without a response), the problem set on the request. ``serving``:
    a request is being served (its response is next for the DUL to send; see `DULClock`)."""

    serving = False

    def _serve_request(self, msg: Any, context_id: int) -> None:
        self.serving = True
        try:
            self._serve_checked_request(msg, context_id)
        finally:
            self.serving = False

    def _serve_checked_request(self, msg: Any, context_id: int) -> None:
        problems = cast(_CheckedDIMSE, self.dimse).problems
        stored = isinstance(msg, C_STORE) and msg.MessageID is not None
        problem = problems.pop(msg.MessageID, None) if stored else None
        context = accepted_context(self, context_id)
        if problem is None or context is None or self._sent_release:
            super()._serve_request(msg, context_id)  # pynetdicom's way, including its refusals
            return
        for keyword in problem.replaced:
            setattr(msg, keyword, None)  # the response repeats no placeholder
        setattr(msg, PROBLEM_ATTRIBUTE, problem)
        self.dimse.cancel_req = {}
        self._is_paused = True
        try:
            StorageServiceClass(self).SCP(msg, context)
        finally:
            self._is_paused = False
            self.dimse.cancel_req = {}


REACTOR_POLL_S = 0.001  # Association._run_reactor's sleep between two looks at its queues


class ReactorClock:
    """The ``time`` module as ``pynetdicom.association`` sees it, but for one call: the reactor
    thread of a checked association, between two looks at its queues, waits for the next
    complete DIMSE message instead of sleeping, for at most the same 1 ms. A request is then
    served as soon as its last fragment is decoded, instead of 0 to 1 ms later (about 0.5 ms per
    C-STORE on one association); the reactor's idle loop and everything it checks are as in
    pynetdicom. Every other caller sleeps as with ``time.sleep``, the only function of ``time``
    that module uses."""

    longest_wait_s = REACTOR_POLL_S  # the reactor's wait for a message, at most (seconds)

    @classmethod
    def sleep(cls, seconds: float) -> None:
        thread = threading.current_thread()
        if seconds != REACTOR_POLL_S or not isinstance(thread, _CheckedAssociation):
            time.sleep(seconds)
            return
        waiting = thread.dimse.msg_queue
        with waiting.not_empty:  # queue.Queue.put notifies it
            if not waiting.queue:
                waiting.not_empty.wait(cls.longest_wait_s)


class DULClock:
    """The ``time`` module as ``pynetdicom.dul`` sees it, but for one call: the DUL thread of a
    checked association, when it found nothing to do, waits for its next piece of work instead
    of sleeping ``_run_loop_delay`` (``dicom.poll_interval_s``), for at most as long: while a
    request is being served, for the response to send (``to_provider_queue``); otherwise for data
    from the peer (``select`` on the socket). Each C-STORE then goes to the handler, and its
    response to the peer, without the 0 to 1 ms of the poll; the idle loop is as in pynetdicom.
    Every other caller sleeps as with ``time.sleep``, the only function of ``time`` used there."""

    @staticmethod
    def sleep(seconds: float) -> None:
        dul = threading.current_thread()
        assoc = getattr(dul, "assoc", None)
        if not isinstance(dul, DULServiceProvider) or not isinstance(assoc, _CheckedAssociation):
            time.sleep(seconds)
            return
        if assoc.serving:
            outgoing = dul.to_provider_queue
            with outgoing.not_empty:  # queue.Queue.put notifies it
                if not outgoing.queue:
                    outgoing.not_empty.wait(seconds)
            return
        peer = cast(socket.socket, getattr(dul.socket, "socket", None))
        try:
            select.select([peer], [], [], seconds)
        except (OSError, TypeError, ValueError):  # closed: pynetdicom's loop finds out and ends
            time.sleep(seconds)


def check_store_requests(assoc: Association, inspect: Inspect) -> None:
    """Make an acceptor association (before it starts) check each C-STORE-RQ's command set as
    soon as it is complete, before pynetdicom decodes it (pynetdicom alone drops, aborts or
    ignores requests with a missing or invalid Affected SOP Class / Instance UID: see
    node/receive/scp_requests.py).

    ``inspect(command_set, abstract_syntax)`` returns the request's problem or None. With a
    problem (and a Message ID), the ``replaced`` values become `PLACEHOLDER`, and the request goes
    to the Storage service's handler with the problem as `held_problem`; the response repeats no
    placeholder. ``__class__`` swaps of the association and its DIMSE provider."""
    dimse = assoc.dimse
    dimse.__class__ = _CheckedDIMSE
    checked = cast(_CheckedDIMSE, dimse)
    checked.problems = {}
    checked.inspect = inspect
    assoc.__class__ = _CheckedAssociation
    pynetdicom_association.time = ReactorClock  # type: ignore[assignment]
    pynetdicom_dul.time = DULClock  # type: ignore[assignment]


def held_problem(request: object) -> object | None:
    """The problem `check_store_requests` set on a C-STORE request, or None."""
    return getattr(request, PROBLEM_ATTRIBUTE, None)
