"""Holding a study while one of its images is in flight, so that a slow transfer (a slow link, a
large image) is not cut off by the quiet period.

A thread in the SCP's process asks the SCP, every ``interval_s``, which studies have a data set
being received right now (node/receive/scp.py, ``StoreSCP.studies_in_flight``) and sets their
``studies.held_until`` to now + ``lease`` in one UPDATE. Nothing is written while nothing is in
flight, so receiving itself does no extra work. The hold is never cleared by the SCP: it lapses by
itself one lease after the last renewal, that is after the data set was stored, the association
ended, or the SCP stopped or died (a completed study's hold is cleared by its completion). Because
the hold lives in the database, a scheduler in another process or on another machine sharing the
PostgreSQL queue sees it too. The quiet period does not complete a held study; the force timeout
does (node/complete/completion.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from datetime import timedelta

from node.config import CompletionConfig
from node.receive.ingest import IngestRecords

log = logging.getLogger(__name__)

LEASE_INTERVALS = 5  # a hold outlives this many missed renewals (a busy database, a slow thread)
MIN_INTERVAL_S = 0.05


def hold_interval_s(completion: CompletionConfig) -> float:
    """How often holds are renewed, in seconds: the completion tick, but at most 1 s and a quarter
    of the quiet period, so that a data set in flight is seen well before its quiet period ends."""
    return max(MIN_INTERVAL_S, min(completion.tick_interval_s, completion.quiet_period_s / 4, 1.0))


def hold_lease_s(completion: CompletionConfig) -> float:
    """How long one renewal holds a study, in seconds: ``LEASE_INTERVALS`` renewal intervals,
    but never longer than the quiet period. A hold is last renewed while its data set is still
    arriving, so a longer lease would outlast the quiet period after the data set was stored,
    and the study would wait for a hold with nothing in flight (and say so in its history)."""
    return min(LEASE_INTERVALS * hold_interval_s(completion), completion.quiet_period_s)


class HoldRenewer:
    """Renews the holds of the studies with a data set in flight, on its own thread."""

    def __init__(
        self,
        studies_in_flight: Callable[[], Collection[str]],
        records: IngestRecords,
        completion: CompletionConfig,
        on_held: Callable[[Collection[str], float], object] | None = None,
    ) -> None:
        self.studies_in_flight = studies_in_flight
        self.on_held = on_held  # told the studies held and for how many seconds
        self.records = records
        self.interval_s = hold_interval_s(completion)
        self.lease = timedelta(seconds=hold_lease_s(completion))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def renew(self) -> int:
        """One pass: hold the studies in flight until now + lease (the records' clock); returns how
        many RECEIVING studies are held. No database access when nothing is in flight."""
        studies = self.studies_in_flight()
        if not studies:
            return 0
        held = self.records.hold_studies(studies, self.lease)
        if self.on_held is not None:
            self.on_held(studies, self.lease.total_seconds())
        return held

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hold-renewer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.renew()
            except Exception as exc:
                # once per run of failures: a database that is down would otherwise log every pass
                if not self._failing:
                    log.warning(
                        "cannot hold studies with an image in flight (%s); retrying",
                        exc.__class__.__name__,
                    )
                self._failing = True
            else:
                self._failing = False
