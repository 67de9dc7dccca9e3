"""Waking `serve`'s own processes when there is work for them, instead of leaving it to their poll.

A study that becomes READY in the completion scheduler (in `serve`) wakes an idle worker process
at once, and a study whose results a worker recorded wakes the dispatcher, so a result reaches
its destination seconds sooner than ``worker.poll_interval_s`` and ``dispatch.poll_interval_s``
would let it, and those polls can stay long (each one is a database query).

One pipe per role: `serve` creates it and keeps both ends; a process that makes work for the
role writes one byte per item of work (`WakeSender.notify`); a process of the role waits on the
pipe together with its stop pipe, its poll interval being the longest wait
(`WakeReceiver.wait`). A worker takes one byte per wake-up, so that two READY studies wake two
idle workers; the dispatcher takes them all, since one round sends everything that is due.

The polls stay, and stay correct alone: a worker on another machine sharing the queue, a
delivery retried after its delay and a study whose claim was returned are found by them. A wake-up
is only ever a hint: a byte for a study another worker took costs one empty claim. As with the
stop pipe (node/stopflag.py), nothing here can block: writes never wait (a full pipe drops the
byte: its readers are behind and busy), reads never wait (a byte another reader took is not
waited for), and a process that dies holding an end disturbs no one.
"""

from __future__ import annotations

import logging
import os
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext

from node.stopflag import PipeStop, StopFlag

log = logging.getLogger(__name__)

MAX_BYTES_PER_WRITE = 512  # more items than this at once: the readers are busy for a while


class WakePipe:
    """The pipe of one role, created in `serve`: ``reader`` goes to the role's processes,
    ``writer`` to the processes that make work for it (both picklable to spawned children)."""

    def __init__(self, context: BaseContext) -> None:
        self.reader, self.writer = context.Pipe(duplex=False)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


class WakeSender:
    """The writing end, in a process that makes work for the role."""

    def __init__(self, writer: Connection) -> None:
        self.fd = writer.fileno()
        self._writer = writer  # keeps the descriptor open
        os.set_blocking(self.fd, False)

    def notify(self, items: int = 1) -> None:
        """Say that ``items`` new items of work are there (0: nothing is written)."""
        if items <= 0:
            return
        try:
            os.write(self.fd, b"\x01" * min(items, MAX_BYTES_PER_WRITE))
        except BlockingIOError:
            pass  # the pipe is full: its readers have wake-ups enough
        except OSError as exc:  # no reader left (serve is gone): the polls still run
            log.debug("wake-up not sent: %s", exc)


class WakeReceiver:
    """The reading end, in a process of the role. ``take_all``: one wake-up takes every byte
    waiting (the dispatcher); otherwise one byte (a worker)."""

    def __init__(self, reader: Connection, take_all: bool = False) -> None:
        self.fd = reader.fileno()
        self._reader = reader
        self.take = 65536 if take_all else 1
        self.closed = False
        os.set_blocking(self.fd, False)

    def wait(self, stop: StopFlag, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a wake-up or for ``stop``; True when woken."""
        if self.closed:  # every writer is gone (serve too): only the poll is left
            stop.wait(timeout)
            return False
        watched: list[object] = [self._reader]
        if isinstance(stop, PipeStop):
            watched.append(stop.reader)
        elif stop.is_set():
            return False
        if self._reader not in wait(watched, timeout):  # type: ignore[arg-type]
            return False
        return self._read(self.take)

    def drain(self) -> None:
        """Drop the wake-ups waiting (they were for work already taken)."""
        while self._read(65536):
            pass

    def _read(self, size: int) -> bool:
        if self.closed:
            return False
        try:
            data = os.read(self.fd, size)
        except BlockingIOError:  # nothing (another reader took it)
            return False
        if not data:
            self.closed = True
        return bool(data)


def wait_for_work(stop: StopFlag, wakeups: WakeReceiver | None, timeout: float) -> bool:
    """An idle worker's or dispatcher's wait: up to ``timeout`` seconds (its poll interval) for
    ``stop`` or, when it has them, a wake-up; True when woken."""
    if wakeups is None:
        stop.wait(timeout)
        return False
    return wakeups.wait(stop, timeout)
