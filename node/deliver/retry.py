"""A retry policy as a value: exponential back-off between attempts, and when to give up.

The dispatcher (node/deliver/outbox.py, node/deliver/dispatch.py) retries a failed delivery after ``first``,
``2 first``, ``4 first`` ... at most ``cap``, and dead-letters it at its ``max_attempts``-th
failure. The ``serve`` supervisor (node/operate/service.py) restarts a child process that keeps dying
after 1, 2, 4 ... at most 60 seconds, and never gives up (``max_attempts`` None).

Attempts are counted from 1: ``attempts`` is the number of failed attempts so far, including the
one that was just recorded. Delays are ``datetime.timedelta`` (seconds where a float is given).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# 2.0 ** 1000 is still a finite float, and beyond it every delay of a microsecond or more is
# past any cap that a timedelta can hold.
_MAX_DOUBLINGS = 1000


@dataclass(frozen=True)
class Retry:
    """Exponential back-off with a cap, and a maximum number of attempts.

    ``first``: the delay after the first failure (greater than zero). ``cap``: the longest delay
    (greater than zero; a cap below ``first`` makes every delay the cap). ``max_attempts``: the
    failure at which to give up (1 or more), or None to retry for ever.

    Raises ValueError when a delay is not positive or ``max_attempts`` is below 1.
    """

    first: timedelta
    cap: timedelta
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.first <= timedelta(0):
            raise ValueError(f"first delay must be greater than 0, got {self.first}")
        if self.cap <= timedelta(0):
            raise ValueError(f"delay cap must be greater than 0, got {self.cap}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")

    @classmethod
    def of_seconds(cls, first_s: float, cap_s: float, max_attempts: int | None = None) -> Retry:
        """The policy from delays in seconds (as configured: ``dispatch.first_retry_s`` and
        ``dispatch.max_retry_s``)."""
        return cls(timedelta(seconds=first_s), timedelta(seconds=cap_s), max_attempts)

    def delay(self, attempts: int) -> timedelta:
        """The wait after the ``attempts``-th failure: ``first * 2 ** (attempts - 1)``, at most
        ``cap``; ``first`` (or ``cap`` if smaller) for ``attempts`` of 1 or less."""
        doublings = min(max(0, attempts - 1), _MAX_DOUBLINGS)
        seconds = self.first.total_seconds() * 2.0**doublings
        if seconds >= self.cap.total_seconds():  # also where timedelta would overflow
            return self.cap
        return min(self.cap, timedelta(seconds=seconds))

    def is_exhausted(self, attempts: int) -> bool:
        """Whether ``attempts`` failures end the retries (dead letter): from ``max_attempts`` on;
        never when ``max_attempts`` is None."""
        return self.max_attempts is not None and attempts >= self.max_attempts

    def next_attempt_at(self, attempts: int, now: datetime) -> datetime | None:
        """When to try again after the ``attempts``-th failure at ``now``, or None when the
        retries are exhausted."""
        return None if self.is_exhausted(attempts) else now + self.delay(attempts)
