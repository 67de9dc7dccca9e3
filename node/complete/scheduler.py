"""APScheduler wiring only: the completion ticks and housekeeping (retention purge); the decisions
live elsewhere."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from node.clock import short_uid
from node.complete.completer import Completer, CompletionOutcome
from node.complete.completion import CompletionPolicy
from node.profiles import Vocabulary
from node.states import StudyState

log = logging.getLogger(__name__)


class CompletionScheduler:
    """Runs ``completer`` every ``interval_s`` seconds, and ``housekeeping`` (when given) every
    ``housekeeping_interval_s`` seconds, on APScheduler's background thread.

    Between those ticks, a study whose due time the SCP announces (`due_in`: its last image plus
    the quiet period, its association's release plus the settle time, the end of its hold) gets
    a tick of its own when that time comes, so that it completes then rather than up to
    ``interval_s`` later; the periodic tick still finds every study (those received by other
    processes, the force timeout).
    ``on_ready`` (when given) is told how many studies a tick made READY (`serve` wakes its
    workers with it, node/wakeup.py).

    Returning the claims of workers that stopped answering is not a job here: the workers do it
    (see `node.work.worker.Worker.run`), so that it happens wherever studies are processed."""

    def __init__(
        self,
        completer: Completer,
        policy: CompletionPolicy,
        vocabulary: Vocabulary,
        interval_s: float,
        housekeeping: Callable[[], object] | None = None,
        housekeeping_interval_s: float = 600.0,
        on_ready: Callable[[int], object] | None = None,
    ) -> None:
        self.on_ready = on_ready
        self._due: dict[str, dict[str, datetime]] = {}  # study -> reason -> its time
        self._due_lock = threading.Lock()
        self.housekeeping = housekeeping
        self.housekeeping_interval_s = housekeeping_interval_s
        self.completer = completer
        self.policy = policy
        self.vocabulary = vocabulary
        self.interval_s = interval_s
        self._scheduler = BackgroundScheduler(timezone=UTC)

    def tick(self) -> list[CompletionOutcome]:
        """One completion pass; safe to run from several processes at once."""
        try:
            outcomes = self.completer.complete_studies(self.policy, self.vocabulary)
        except Exception:
            log.exception("completion tick failed; the next tick tries again")
            return []
        ready = sum(outcome.state is StudyState.READY for outcome in outcomes)
        if ready and self.on_ready is not None:
            self.on_ready(ready)
        for outcome in outcomes:
            log.info(
                "study %s is %s (%s)",
                short_uid(outcome.study_instance_uid),
                outcome.state,
                outcome.reason,
            )
        return outcomes

    def due_in(self, study_instance_uid: str, seconds: float, reason: str) -> None:
        """The study may complete ``seconds`` from now for ``reason`` ("quiet": its last image
        plus the quiet period; "release": its association's release plus the settle time;
        "hold": the end of its hold): tick then. Each reason keeps its latest time; the study's
        one APScheduler job waits for the earliest of them, and a tick that comes before a time
        announced since waits again for the next."""
        when = datetime.now(UTC) + timedelta(seconds=seconds)
        with self._due_lock:
            times = self._due.setdefault(study_instance_uid, {})
            earliest = min(times.values(), default=None)
            times[reason] = when
            if earliest is None or when < earliest:
                self._at(study_instance_uid, when)

    def _at(self, study_instance_uid: str, when: datetime) -> None:
        """(Re)schedule the study's job at ``when``; called holding ``_due_lock``."""
        if not self._scheduler.running:
            return
        self._scheduler.add_job(
            self._due_tick,
            "date",
            run_date=when,
            args=(study_instance_uid,),
            misfire_grace_time=None,  # late (a busy machine) is still worth running
            id=f"due {study_instance_uid}",
            replace_existing=True,
        )

    def _due_tick(self, study_instance_uid: str) -> None:
        now = datetime.now(UTC)
        with self._due_lock:
            times = self._due.get(study_instance_uid, {})
            passed = [reason for reason, when in times.items() if when <= now]
            for reason in passed:
                del times[reason]
            if times:
                self._at(study_instance_uid, min(times.values()))
            else:
                self._due.pop(study_instance_uid, None)
        if passed:
            self.tick()

    def start(self) -> None:
        self._every(self.tick, self.interval_s, "completion")
        if self.housekeeping is not None:
            self._every(self._housekeep, self.housekeeping_interval_s, "housekeeping")
        self._scheduler.start()

    def _every(self, job: Callable[[], object], seconds: float, name: str) -> None:
        """Run ``job`` now and every ``seconds``; a run that is still going is not doubled."""
        self._scheduler.add_job(
            job,
            "interval",
            seconds=seconds,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
            id=name,
        )

    def _housekeep(self) -> None:
        assert self.housekeeping is not None
        try:
            self.housekeeping()
        except Exception:
            log.exception("housekeeping (retention purge) failed; it runs again later")

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
