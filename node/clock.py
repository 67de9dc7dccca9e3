"""Time and UID display, shared by every role: the injectable clock and short UIDs for logs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""A source of the current time: returns an aware UTC datetime. Tests inject a fake one."""


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the node's default `Clock`)."""
    return datetime.now(UTC)


def short_uid(uid: str, keep: int = 6) -> str:
    """A DICOM UID shortened for people (logs, status): the root's first ``keep`` characters and
    the last ``keep`` that tell studies apart, joined by an ellipsis; a UID of at most
    ``2 * keep + 1`` characters is returned whole."""
    return uid if len(uid) <= 2 * keep + 1 else f"{uid[:keep]}…{uid[-keep:]}"
