"""Time and UID display, shared by every role: the injectable clock and short UIDs for people."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""A source of the current time: returns an aware UTC datetime. Tests inject a fake one."""

ELLIPSIS = "…"
"""Marks a UID shown by its end only; `studies show` accepts a fragment with it."""


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the node's default `Clock`)."""
    return datetime.now(UTC)


def short_uid(uid: str, keep: int = 6) -> str:
    """A DICOM UID shortened for logs: the root's first ``keep`` characters and the last
    ``keep`` that tell studies apart, joined by an ellipsis; a UID of at most ``2 * keep + 1``
    characters is returned whole. Not guaranteed unique: reports use :func:`unique_tails`."""
    return uid if len(uid) <= 2 * keep + 1 else f"{uid[:keep]}…{uid[-keep:]}"


def unique_tails(
    uids: Collection[str], others: Collection[str] = (), keep: int = 6
) -> Mapping[str, str]:
    """The shortest end of each UID in ``uids`` (at least ``keep`` characters) that no other UID
    of ``uids`` or ``others`` ends with, starts with or equals, the way git shortens hashes:
    the tail grows one character at a time until it names one UID only. A UID whose every tail
    is shared (it ends or starts another UID) maps to itself, which an exact match still names.

    Returns ``{uid: tail}``; ``others`` are UIDs that are not shown but must not be confused
    with the shown ones (the rest of the database). The tail is a substring of its UID, so a
    search by prefix or suffix finds that UID only."""
    everyone = set(uids) | set(others)
    tails: dict[str, str] = {}
    for uid in uids:
        rivals = [other for other in everyone if other != uid]
        size = min(keep, len(uid))
        while size < len(uid):
            tail = uid[-size:]
            if not any(other.endswith(tail) or other.startswith(tail) for other in rivals):
                break
            size += 1
        tails[uid] = uid[-size:]
    return tails


def shown_tail(uid: str, tail: str) -> str:
    """How a UID's unique tail is shown: ``…`` and the tail, or the whole UID when the tail is
    all of it."""
    return uid if tail == uid else f"{ELLIPSIS}{tail}"
