"""The completion scheduler's due passes (node/complete/scheduler.py `due_in`) on a real
APScheduler, and serve's wake-up pipes (node/wakeup.py) on real pipes.

The passes themselves (what a tick decides) are tested with the completer elsewhere; here a
scheduler whose pass only notes when it ran, and optionally takes a while, as one does on a busy
database.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.complete.completer import CompletionOutcome
from node.complete.completion import CompletionPolicy
from node.complete.scheduler import CompletionScheduler
from node.config_sections import CompletionConfig
from node.profiles import load_vocabulary
from node.receive.holds import LEASE_INTERVALS, hold_interval_s, hold_lease_s
from node.wakeup import WakePipe, WakeReceiver, WakeSender
from tests.support.serve import wait_for


class NotingScheduler(CompletionScheduler):
    """Each pass notes its start time and the due times it was run for, then lasts
    ``pass_s``; the periodic tick is an hour apart (and its first run is forgotten)."""

    def __init__(self, pass_s: float = 0.0) -> None:
        super().__init__(None, CompletionPolicy.from_seconds(60, 900), load_vocabulary(), 3600.0)  # type: ignore[arg-type]
        self.pass_s = pass_s
        self.passes: list[datetime] = []
        self.lock = threading.Lock()

    def tick(self) -> list[CompletionOutcome]:
        with self.lock:
            self.passes.append(datetime.now(UTC))
        time.sleep(self.pass_s)
        return []

    def due_passes(self) -> list[datetime]:
        with self.lock:
            return self.passes[1:]  # the first is the periodic tick at start


def idle(scheduler: CompletionScheduler) -> bool:
    with scheduler._due_lock:
        return not scheduler._due


def test_a_pass_runs_at_each_due_time_and_nothing_is_left_behind() -> None:
    scheduler = NotingScheduler()
    scheduler.start()
    try:
        wait_for(lambda: scheduler.passes, what="the first periodic tick")
        announced = datetime.now(UTC)
        scheduler.due_in("1.2.3", 0.3, "quiet")
        scheduler.due_in("1.2.4", 0.6, "release")
        wait_for(lambda: len(scheduler.due_passes()) == 2, timeout=10, what="two due passes")
        first, second = scheduler.due_passes()
        assert (first - announced).total_seconds() >= 0.3
        assert (second - announced).total_seconds() >= 0.6
        wait_for(lambda: idle(scheduler), timeout=5, what="no time left")
    finally:
        scheduler.stop()


def test_a_later_image_moves_the_quiet_time_on() -> None:
    scheduler = NotingScheduler()
    scheduler.start()
    try:
        wait_for(lambda: scheduler.passes, what="the first periodic tick")
        scheduler.due_in("1.2.3", 0.3, "quiet")
        moved = datetime.now(UTC)
        scheduler.due_in("1.2.3", 0.8, "quiet")  # the study's next image
        wait_for(lambda: idle(scheduler), timeout=10, what="the due pass")
        passes = scheduler.due_passes()
        assert len(passes) == 1
        assert (passes[0] - moved).total_seconds() >= 0.8
    finally:
        scheduler.stop()


def test_a_time_that_comes_during_a_slow_pass_still_gets_its_pass() -> None:
    """A hold ending while the quiet time's pass is still running (a busy database): the hold's
    time gets a pass of its own, and no time stays behind."""
    scheduler = NotingScheduler(pass_s=0.6)
    scheduler.start()
    try:
        wait_for(lambda: scheduler.passes, what="the first periodic tick")
        time.sleep(0.7)  # the first periodic tick is over
        scheduler.due_in("1.2.3", 0.1, "quiet")
        hold = datetime.now(UTC)
        scheduler.due_in("1.2.3", 0.3, "hold")
        wait_for(lambda: len(scheduler.due_passes()) == 2, timeout=10, what="the hold's pass")
        assert (scheduler.due_passes()[1] - hold).total_seconds() >= 0.3
        wait_for(lambda: idle(scheduler), timeout=5, what="no time left")
    finally:
        scheduler.stop()


def test_nothing_is_scheduled_once_stopped() -> None:
    scheduler = NotingScheduler()
    scheduler.due_in("1.2.3", 0.1, "quiet")  # not started: nothing to run it
    assert idle(scheduler)
    scheduler.start()
    scheduler.stop()
    scheduler.due_in("1.2.3", 0.1, "quiet")
    assert idle(scheduler)


@pytest.fixture
def pipe() -> WakePipe:
    return WakePipe(multiprocessing.get_context("spawn"))


class Never:
    """A stop flag that is never set (a worker's `mura-node worker` threading.Event)."""

    def is_set(self) -> bool:
        return False

    def wait(self, timeout: float | None = None) -> bool:
        time.sleep(timeout or 0)
        return False


def test_each_wake_up_wakes_one_worker(pipe: WakePipe) -> None:
    sender, receiver = WakeSender(pipe.writer), WakeReceiver(pipe.reader)
    sender.notify(2)
    assert receiver.wait(Never(), 1.0) is True
    assert receiver.wait(Never(), 1.0) is True
    assert receiver.wait(Never(), 0.05) is False  # none left: the wait runs out
    sender.notify(0)
    assert receiver.wait(Never(), 0.05) is False


def test_the_dispatcher_takes_every_wake_up_at_once(pipe: WakePipe) -> None:
    sender, receiver = WakeSender(pipe.writer), WakeReceiver(pipe.reader, take_all=True)
    sender.notify(5)
    assert receiver.wait(Never(), 1.0) is True
    assert receiver.wait(Never(), 0.05) is False


def test_a_worker_drops_the_wake_ups_left_for_claimed_studies(pipe: WakePipe) -> None:
    sender, receiver = WakeSender(pipe.writer), WakeReceiver(pipe.reader)
    sender.notify(40)
    receiver.drain()
    assert receiver.wait(Never(), 0.05) is False


def test_a_full_pipe_never_blocks_the_sender(pipe: WakePipe) -> None:
    sender, receiver = WakeSender(pipe.writer), WakeReceiver(pipe.reader, take_all=True)
    for _ in range(2000):  # far more than a pipe holds
        sender.notify(512)
    assert receiver.wait(Never(), 1.0) is True


def test_with_every_writer_gone_the_receiver_falls_back_to_its_poll(pipe: WakePipe) -> None:
    receiver = WakeReceiver(pipe.reader)
    pipe.writer.close()
    assert receiver.wait(Never(), 1.0) is False  # end of file: not a wake-up
    assert receiver.closed
    started = time.monotonic()
    assert receiver.wait(Never(), 0.2) is False
    assert time.monotonic() - started >= 0.2  # waited for its poll instead of spinning


@given(
    quiet=st.floats(min_value=0.2, max_value=3600.0),
    tick=st.floats(min_value=0.05, max_value=3600.0),
)
def test_a_hold_never_outlasts_the_quiet_period_and_survives_missed_renewals(
    quiet: float, tick: float
) -> None:
    """A hold is last renewed while its data set arrives: a lease longer than the quiet period
    would hold the study after its images were stored, with nothing in flight."""
    completion = CompletionConfig(
        quiet_period_s=quiet, tick_interval_s=tick, force_complete_s=max(quiet, 900.0)
    )
    lease, interval = hold_lease_s(completion), hold_interval_s(completion)
    assert lease <= quiet
    assert lease >= min(LEASE_INTERVALS, 4) * interval - 1e-9  # renewals may be missed
