"""How `serve` tells its child processes to stop (a pipe, not a shared lock), and how a process
notes that it was asked to stop (`StopSignals`).

``multiprocessing.Event`` is built on shared semaphores: a child killed while waiting on it (a
native crash, the OOM killer) leaves it counted as a sleeper, and the parent's ``set()`` then
blocks for ever waiting for that child to wake. Here the parent holds the write end of a pipe
and each child only the read end: closing the write end, or the parent dying, makes every
reader see end-of-file at once, and a dead reader disturbs no one.
"""

from __future__ import annotations

import logging
import signal
import time
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any, Protocol

log = logging.getLogger(__name__)


class StopFlag(Protocol):
    """What a worker or dispatcher loop needs of ``threading.Event``."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class PipeStop:
    """A child's view of the parent's stop pipe, with ``threading.Event``'s reading methods."""

    def __init__(self, reader: Connection) -> None:
        self.reader = reader
        self._stopped = False

    def is_set(self) -> bool:
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> bool:
        if not self._stopped and self.reader.poll(timeout):  # end-of-file: stop
            self._stopped = True
        return self._stopped


class StopSignals:
    """SIGINT and SIGTERM, noted by a handler that only appends to a list: a handler that took a
    lock (an Event's, the logging module's) could interrupt its own thread holding that lock."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *_: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (a signal cuts it short); True once a stop was asked for."""
        if not self.received:
            time.sleep(seconds)
        if self.received:
            log.info("received %s", signal.Signals(self.received[0]).name)
            return True
        return False
