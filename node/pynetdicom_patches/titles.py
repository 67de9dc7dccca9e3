"""Association requests whose AE titles are blank: rejected by the node, not dropped by pynetdicom.

PS3.8 (9.3.2) makes the Called and Calling AE Title fields of an A-ASSOCIATE-RQ significant: 16
spaces is no title. pynetdicom raises while it decodes such a PDU (``set_ae``: "must not consist
entirely of spaces"), logs the exception with its traceback from the DUL thread and aborts the
connection, so the peer learns nothing and the node records nothing. `decode_blank_titles`
lets the request through with a stand-in title and marks the association, so that the node
rejects it with A-ASSOCIATE-RJ "calling (or called) AE title not recognised" and records why
(node/receive/scp.py).

Part of node/pynetdicom_patches/: it reaches into
``DULServiceProvider._decode_pdu`` (an attribute of the association's DUL, set per association),
and tests/integration/test_scp.py runs it over real associations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pynetdicom.association import Association

__all__ = ["STAND_IN_TITLE", "blank_titles", "decode_blank_titles"]

A_ASSOCIATE_RQ = 0x01  # PDU type (PS3.8 9.3.2)
_CALLED = slice(10, 26)  # the AE title fields of an A-ASSOCIATE-RQ PDU, 16 bytes each
_CALLING = slice(26, 42)
STAND_IN_TITLE = b"BLANK".ljust(16)  # decoded in place of a blank title; never accepted
_MARK = "node_blank_titles"  # set on the association: ("called", "calling") or a part of it


def decode_blank_titles(assoc: Association) -> None:
    """Decode this association's A-ASSOCIATE-RQ even when an AE title in it is blank, and mark the
    association (see `blank_titles`); every other PDU is decoded as pynetdicom does."""
    dul = assoc.dul
    decode: Callable[[bytearray], Any] = dul._decode_pdu

    def decode_pdu(bytestream: bytearray) -> Any:
        if bytestream[:1] != bytes([A_ASSOCIATE_RQ]) or len(bytestream) < _CALLING.stop:
            return decode(bytestream)
        blank = tuple(
            name
            for name, field in (("called", _CALLED), ("calling", _CALLING))
            if not bytes(bytestream[field]).strip(b" ")
        )
        if not blank:
            return decode(bytestream)
        patched = bytearray(bytestream)
        for name in blank:
            patched[_CALLED if name == "called" else _CALLING] = STAND_IN_TITLE
        setattr(assoc, _MARK, blank)
        return decode(patched)

    dul._decode_pdu = decode_pdu  # type: ignore[method-assign]


def blank_titles(assoc: Association) -> tuple[str, ...]:
    """Which AE titles of the association's request were blank: "called", "calling", both or
    none (an empty tuple)."""
    return tuple(getattr(assoc, _MARK, ()))
