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

MAX_DUE_PASSES = 16  # due passes running at once (each waits for the database)


class CompletionScheduler:
    """Runs ``completer`` every ``interval_s`` seconds, and ``housekeeping`` (when given) every
    ``housekeeping_interval_s`` seconds, on APScheduler's background thread.

    Between those ticks, when a due time that the SCP announced comes (`due_in`: a study's last
    image plus the quiet period, its association's release plus the settle time, the end of its
    hold), a pass runs then, so that the study completes at that time rather than up to
    ``interval_s`` later. The periodic tick still finds every study: those received by other
    processes or before a restart (announced times live in memory), the force timeout, a study
    whose pass failed.
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
        self._armed: datetime | None = None  # when the due job runs next
        self._stopping = False
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
        """The study may complete ``seconds`` from now for ``reason`` ("quiet", "release",
        "hold"): run a pass then. Each study keeps the latest time of each reason (a new image
        moves its quiet time on); one APScheduler job, for all studies, waits for the earliest
        time announced, runs one pass for every time that has come, and waits for the next."""
        now = datetime.now(UTC)
        when = now + timedelta(seconds=seconds)
        with self._due_lock:
            if self._stopping or not self._scheduler.running:
                return
            self._due.setdefault(study_instance_uid, {})[reason] = when
            self._arm(when, now)

    def _arm(self, when: datetime, now: datetime) -> None:
        """Schedule the due job at ``when`` unless it already runs sooner (an armed time
        already past is armed again: its run may have been skipped); holding ``_due_lock``."""
        armed = self._armed
        if self._stopping or (armed is not None and now < armed <= when):
            return
        self._armed = when
        self._scheduler.add_job(
            self._due_pass,
            "date",
            run_date=when,
            misfire_grace_time=None,  # late (a busy machine) is still worth running
            # A time that comes while a pass runs starts another (passes are safe to overlap);
            # with APScheduler's default of one instance it would be skipped and lost.
            max_instances=MAX_DUE_PASSES,
            id="due",
            replace_existing=True,
        )

    def _due_pass(self) -> None:
        """The due job: forget the times that have come, run one pass if any did, then wait for
        the earliest time left (armed after the pass, so that a time announced during it and
        already past runs at once)."""
        now = datetime.now(UTC)
        with self._due_lock:
            self._armed = None
            came = False
            for study, times in list(self._due.items()):
                for reason in [reason for reason, when in times.items() if when <= now]:
                    del times[reason]
                    came = True
                if not times:
                    del self._due[study]
        if came:
            self.tick()
        with self._due_lock:
            earliest = min((min(t.values()) for t in self._due.values()), default=None)
            if earliest is not None:
                self._arm(earliest, datetime.now(UTC))

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
        with self._due_lock:  # no due job is added once shutdown holds APScheduler's locks
            self._stopping = True
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
