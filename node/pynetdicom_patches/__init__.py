"""Every change the node makes to pynetdicom's behaviour, and every reach into its internals.

Checked against pynetdicom ``PYNETDICOM_CHECKED`` (pyproject.toml allows 3.x). Each function or
class below names the pynetdicom behaviour it changes and why; tests/integration/test_pynetdicom_patches.py
checks that every private attribute, method and signature used here still exists with the shape
relied on, and runs each patch over a real loopback association, so an upgrade that breaks one
fails there first. No other module of the node touches a private name of pynetdicom except
node/pynetdicom_titles.py (blank AE titles; kept apart for size).

Receiving (node/receive/scp.py, node/receive/scp_requests.py):

- `stream_data_sets_to_disk`: ``_config.STORE_RECV_CHUNKED_DATASET``;
- `set_idle_sleep`: the DUL reactor's ``_run_loop_delay``;
- `message_being_received`, `data_set_path`, `discard_partial_data_set`: the DIMSE message being
  assembled and its ``_data_set_path`` / ``_data_set_file``;
- `bound_pdu_reads` (`BoundedSocket`): a ``__class__`` swap of the association's socket;
- `PreparingRequestHandler`: an override of ``RequestHandler._create_association``;
- `register_server`: ``AE._servers``;
- `check_store_requests` (`_CheckedDIMSE`, `_CheckedAssociation`): ``__class__`` swaps of the
  association and its DIMSE provider, ``Association._serve_request``, ``_accepted_cx``,
  ``_sent_release``, ``_is_paused``, ``DIMSEMessage.encoded_command_set``; and
  `ReactorClock`, which stands in for the ``time`` module of ``pynetdicom.association`` so that
  a checked association's reactor wakes when a message is queued instead of after its fixed
  1 ms poll (``_run_reactor``'s ``time.sleep(0.001)``; ``DIMSEServiceProvider.msg_queue``);
  `DULClock`, the same for ``pynetdicom.dul``: its reactor waits for data from the peer or for a
  response to send (``run_reactor``'s ``time.sleep(self._run_loop_delay)``,
  ``to_provider_queue``, ``socket.socket``).

Blank AE titles (node/receive/scp.py; `titles`):

- `decode_blank_titles`, `blank_titles`: ``DULServiceProvider._decode_pdu`` of each association,
  so that a request with a blank title is rejected with A-ASSOCIATE-RJ rather than dropped.

Sending (node/deliver/scu.py):

- `files_sent_as_written`: ``_config.STORE_SEND_CHUNKED_DATASET``, so that a result file goes
  out as its bytes, without being decoded and encoded again;
- `ReportingAE` (`ReportingSocket`): overrides of ``AE._create_socket`` and
  ``AssociationSocket._create_socket``, and reads of ``tls_args`` and ``_is_connected``, to keep
  why a connection failed.
"""

from __future__ import annotations

from node.pynetdicom_patches.receiving import (
    C_STORE_RQ,
    PLACEHOLDER,
    PROBLEM_ATTRIBUTE,
    PYNETDICOM_CHECKED,
    REACTOR_POLL_S,
    BoundedSocket,
    DULClock,
    PreparingRequestHandler,
    ReactorClock,
    StoreRequestProblem,
    accepted_context,
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
from node.pynetdicom_patches.sending import ReportingAE, ReportingSocket, files_sent_as_written
from node.pynetdicom_patches.titles import (
    A_ASSOCIATE_RQ,
    STAND_IN_TITLE,
    blank_titles,
    decode_blank_titles,
)

__all__ = [
    "A_ASSOCIATE_RQ",
    "C_STORE_RQ",
    "PLACEHOLDER",
    "PROBLEM_ATTRIBUTE",
    "PYNETDICOM_CHECKED",
    "REACTOR_POLL_S",
    "STAND_IN_TITLE",
    "BoundedSocket",
    "DULClock",
    "PreparingRequestHandler",
    "ReactorClock",
    "ReportingAE",
    "ReportingSocket",
    "StoreRequestProblem",
    "accepted_context",
    "blank_titles",
    "bound_pdu_reads",
    "check_store_requests",
    "data_set_path",
    "decode_blank_titles",
    "discard_partial_data_set",
    "files_sent_as_written",
    "held_problem",
    "message_being_received",
    "register_server",
    "set_idle_sleep",
    "stream_data_sets_to_disk",
]
