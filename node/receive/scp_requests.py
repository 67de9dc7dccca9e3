"""C-STORE requests whose Affected SOP Class UID or Affected SOP Instance UID is missing or not a
UID: answered with a status (0xC001 and an ErrorComment naming the problem, by the C-STORE
handler of node/receive/store_handler.py) instead of a dropped association.

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
every C-STORE, and the response carries neither placeholder. The mechanism, which reaches into
pynetdicom's internals, is ``check_store_requests`` in node/pynetdicom_patches/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association

from node.pynetdicom_patches import check_store_requests, held_problem

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
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
    problem = held_problem(event.request)
    return problem if isinstance(problem, RequestProblem) else None


def check_requests(assoc: Association) -> None:
    """Make an acceptor association (before it starts) check its C-STORE requests as above
    (node/pynetdicom_patches/ holds the mechanism)."""
    check_store_requests(assoc, problem_of)
