"""How `serve` tells its child processes to stop: a pipe, not a shared lock.

``multiprocessing.Event`` is built on shared semaphores: a child killed while waiting on it (a
native crash, the OOM killer) leaves it counted as a sleeper, and the parent's ``set()`` then
blocks for ever waiting for that child to wake. Here the parent holds the write end of a pipe
and each child only the read end: closing the write end, or the parent dying, makes every
reader see end-of-file at once, and a dead reader disturbs no one.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Protocol


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
