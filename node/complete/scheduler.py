"""APScheduler wiring only: the periodic completion tick and housekeeping (retention purge);
the decisions live elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from node.clock import short_uid
from node.complete.completer import Completer, CompletionOutcome
from node.complete.completion import CompletionPolicy
from node.profiles import Vocabulary

log = logging.getLogger(__name__)


class CompletionScheduler:
    """Runs ``completer`` every ``interval_s`` seconds, and ``housekeeping`` (when given) every
    ``housekeeping_interval_s`` seconds, on APScheduler's background thread.

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
    ) -> None:
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
        for outcome in outcomes:
            log.info(
                "study %s is %s (%s)",
                short_uid(outcome.study_instance_uid),
                outcome.state,
                outcome.reason,
            )
        return outcomes

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
