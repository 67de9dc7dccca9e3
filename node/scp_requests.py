"""C-STORE requests whose Affected SOP Class UID or Affected SOP Instance UID is missing or not a
UID: answered with a status (0xC001 and an ErrorComment naming the problem, by node/scp.py's
handler) instead of a dropped association.

pynetdicom 3.0.4 alone, receiving data sets into a temporary file as the node does
(``STORE_RECV_CHUNKED_DATASET``):

- a request without either UID kills the association's reactor thread (AttributeError while the
  command set is decoded, just after the temporary file was created): no response, the
  association drops, and the empty temporary file stays until the node restarts;
- an Affected SOP Class UID that is not a UID finds no service class: the association is aborted
  without a response, and the temporary file stays;
- a UID longer than 64 characters makes the message undecodable: the association is aborted;
- an empty UID counts as absent, and a request without one is ignored: no response at all;
- an Affected SOP Instance UID that is not a UID reaches the handler, which could only say that
  the data set differs from the request.

Here the command set is checked as soon as it is complete, before pynetdicom decodes it: an
offending value is replaced by a placeholder that pynetdicom accepts, the problem is kept under
the request's Message ID, and the request goes to the Storage service, whose handler asks
:func:`request_problem` first and refuses. pynetdicom then removes the temporary file as after
every C-STORE, and the response carries neither placeholder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
C_STORE_RQ = 0x0001  # CommandField
PLACEHOLDER = "0"  # a value pynetdicom decodes; never answered, never stored
CHECKED = {
    "AffectedSOPClassUID": "Affected SOP Class UID",
    "AffectedSOPInstanceUID": "Affected SOP Instance UID",
}


def is_uid(value: str | None) -> bool:
    """True for a UID as PS3.5 9.1 spells it: digits and dots, at most 64 characters."""
    return bool(value) and len(value or "") <= 64 and bool(_UID.match(value or ""))


@dataclass(frozen=True)
class RequestProblem:
    """What is wrong with a C-STORE request's identifiers, and which ones were replaced.

    ``mismatch``: the Affected SOP Class UID is a UID, but not the presentation context's
    abstract syntax (answered 0xA900, like a data set that differs from its request); otherwise
    an identifier is missing or not a UID (0xC001)."""

    comment: str  # at most 64 characters: it becomes the ErrorComment
    replaced: tuple[str, ...] = ()
    mismatch: bool = False


def _value(command_set: Dataset, keyword: str) -> str:
    value = command_set.get(keyword)
    return "" if value is None else str(value).rstrip("\0 ")


def problem_of(command_set: Dataset, abstract_syntax: str | None = None) -> RequestProblem | None:
    """The problem with a C-STORE-RQ command set's Affected SOP Class / Instance UID, if any;
    with ``abstract_syntax``, also a class other than the presentation context's."""
    missing = [k for k in CHECKED if not _value(command_set, k)]
    invalid = [k for k in CHECKED if k not in missing and not is_uid(_value(command_set, k))]
    if not missing and not invalid:
        if abstract_syntax is None or _value(command_set, "AffectedSOPClassUID") == abstract_syntax:
            return None
        return RequestProblem("Affected SOP Class UID is not the presentation context's", (), True)
    kinds = [CHECKED[k].split()[2] for k in missing or invalid]  # "Class", "Instance"
    if missing and invalid:
        comment = f"Affected SOP {kinds[0]} UID missing, {CHECKED[invalid[0]][9:]} not valid"
    elif missing:
        plural = "s" if len(kinds) > 1 else ""
        comment = f"C-STORE request without Affected SOP {' and '.join(kinds)} UID{plural}"
    elif len(kinds) > 1:
        comment = "Affected SOP Class and Instance UIDs in the request not valid"
    else:
        comment = f"Affected SOP {kinds[0]} UID in the request is not a valid UID"
    return RequestProblem(comment[:64], tuple(missing + invalid))


def request_problem(event: evt.Event) -> RequestProblem | None:
    """For the C-STORE handler: why the request cannot be served, or None."""
    problem = getattr(event.request, "node_request_problem", None)
    return problem if isinstance(problem, RequestProblem) else None


class _CheckedDIMSE(DIMSEServiceProvider):
    """Checks a C-STORE-RQ's command set when its last fragment arrives, before pynetdicom's
    decoding of the message sees it."""

    problems: dict[int, RequestProblem]

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
            context = self.assoc._accepted_cx.get(context_id)
            abstract_syntax = None if context is None else context.abstract_syntax
            problem = problem_of(command_set, abstract_syntax) if is_store else None
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
    def _serve_request(self, msg: Any, context_id: int) -> None:
        problems = cast(_CheckedDIMSE, self.dimse).problems
        stored = isinstance(msg, C_STORE) and msg.MessageID is not None
        problem = problems.pop(msg.MessageID, None) if stored else None
        context = self._accepted_cx.get(context_id)
        if problem is None or context is None or self._sent_release:
            super()._serve_request(msg, context_id)  # pynetdicom's way, including its refusals
            return
        for keyword in problem.replaced:
            setattr(msg, keyword, None)  # the response repeats no placeholder
        msg.node_request_problem = problem
        self.dimse.cancel_req = {}
        self._is_paused = True
        try:
            StorageServiceClass(self).SCP(msg, context)
        finally:
            self._is_paused = False
            self.dimse.cancel_req = {}


def check_requests(assoc: Association) -> None:
    """Make an acceptor association (before it starts) check its C-STORE requests as above."""
    dimse = assoc.dimse
    dimse.__class__ = _CheckedDIMSE
    cast(_CheckedDIMSE, dimse).problems = {}
    assoc.__class__ = _CheckedAssociation
