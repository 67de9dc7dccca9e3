"""The work role's queue: claim a READY study, renew its lease, record its end, reclaim it.

A claimed study's whole life on the database side is one class, `WorkQueue`:

* ``claim_ready_study`` takes the oldest READY study (``SELECT ... FOR UPDATE SKIP LOCKED`` on
  PostgreSQL, so workers on several machines never take the same study; ``BEGIN IMMEDIATE`` on
  SQLite) and moves it to PROCESSING under a lease;
* ``renew_leases`` is the worker's heartbeat;
* ``finish`` records the results, a delivery per destination and object, and DISPATCHING (or DONE
  without destinations); ``fail`` ends the study FAILED with a reason;
* ``reclaim_expired`` returns to READY the studies whose worker stopped renewing its lease (it died,
  or its machine did); every worker's heartbeat runs it after renewing its own leases, so a live
  claim is never taken back, and two workers reclaiming at once (on several machines sharing a
  PostgreSQL queue) return each study once: the rows are locked ``FOR UPDATE SKIP LOCKED`` and
  changed only while still PROCESSING. ``reclaim_dead_worker`` returns, at once, the studies of
  a local worker process that `serve` saw die.

Every end state is a compare-and-set on (state PROCESSING, generation, claimed_by): a study that
was re-opened by a late image while it was being processed keeps its new state, and the work done
for the old generation is thrown away (its files removed by the caller); the new generation is
processed again.

Crash accounting: each reclaim adds one to the study's ``crashes`` counter (a column, in the same
transaction). A study whose workers have died on it ``worker.max_crashes`` times, counted over its
whole life (a re-opened study keeps its count), ends FAILED instead of going back to READY, so an
image that crashes a decoder cannot take every worker down in turn, for ever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from node.clock import Clock, utcnow
from node.config import Destination
from node.db import Dispatch, Instance, Result, Study, StudyEvent
from node.profiles import Role
from node.states import DeliveryState, ResultKind, StudyEventName, StudyState


@dataclass(frozen=True)
class ClaimedStudy:
    """A study this worker took: the generation it took (the claim holds for that one only),
    its study type and when it became READY (aware UTC; for the queue-wait metric)."""

    study_id: int
    study_instance_uid: str
    generation: int
    study_type: str | None
    ready_since: datetime | None = None


@dataclass(frozen=True)
class StudyImage:
    instance_id: int
    sop_instance_uid: str
    file_path: str


@dataclass(frozen=True)
class ResultFile:
    """A result object written to results/ (``file_path`` relative to the data directory)."""

    kind: ResultKind
    sop_class_uid: str
    sop_instance_uid: str
    file_path: str


class WorkQueue:
    """The study queue as the workers see it, in ``database`` (a SQLAlchemy engine), at the time
    ``clock`` gives (aware UTC). ``max_crashes`` (at least 1) is how many times workers may die
    on one study before it ends FAILED."""

    def __init__(self, database: Engine, clock: Clock = utcnow, max_crashes: int = 3) -> None:
        self.database = database
        self.clock = clock
        self.max_crashes = max_crashes

    def claim_ready_study(self, worker_id: str, lease: timedelta) -> ClaimedStudy | None:
        """Atomically take the oldest READY study for processing under a ``lease`` from now;
        None when there is none. ``worker_id`` ("host:pid:thread", cut to 128 characters) is
        stamped on the claim."""
        now = self.clock()
        with Session(self.database) as session, session.begin():
            study = session.scalar(
                select(Study)
                .where(Study.state == StudyState.READY)
                .order_by(Study.state_changed_at, Study.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if study is None:
                return None
            claimed = session.execute(
                update(Study)
                .where(Study.id == study.id, Study.state == StudyState.READY)
                .values(
                    state=StudyState.PROCESSING,
                    claimed_by=worker_id[:128],
                    lease_expires_at=now + lease,
                    state_changed_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            session.add(
                StudyEvent(
                    study_id=study.id,
                    at=now,
                    event=StudyEventName.CLAIMED,
                    detail=f"by {worker_id}",
                )
            )
            return ClaimedStudy(
                study.id,
                study.study_instance_uid,
                study.generation,
                study.study_type,
                study.state_changed_at,
            )

    def images(self, claimed: ClaimedStudy) -> list[StudyImage]:
        """The study's analysed images of its study type, in arrival order."""
        with Session(self.database) as session:
            rows = session.execute(
                select(Instance.id, Instance.sop_instance_uid, Instance.file_path)
                .where(
                    Instance.study_id == claimed.study_id,
                    Instance.role == Role.ANALYSE.value,
                    Instance.study_type == claimed.study_type,
                    Instance.file_path.is_not(None),
                )
                .order_by(Instance.id)
            ).all()
        return [StudyImage(r.id, r.sop_instance_uid, str(r.file_path)) for r in rows]

    def latest_report(self, study_id: int) -> str | None:
        """The file of the study's newest SR, to name as predecessor of the next one."""
        with Session(self.database) as session:
            return session.scalar(
                select(Result.file_path)
                .where(Result.study_id == study_id, Result.kind == ResultKind.SR)
                .order_by(Result.created_at.desc(), Result.id.desc())
                .limit(1)
            )

    def finish(
        self,
        claimed: ClaimedStudy,
        worker_id: str,
        results: Sequence[ResultFile],
        destinations: Sequence[Destination],
        summary: str,
        header_changes: str | None = None,
    ) -> bool:
        """Record the results and their deliveries; False when the claim is no longer ours.

        ``header_changes`` (keywords and reasons, no values) goes into the study's history as a
        "headers cleaned" event, in the same transaction as the results."""
        now = self.clock()
        with Session(self.database) as session, session.begin():
            if not self._still_ours(session, claimed, worker_id):
                return False
            rows = [
                Result(
                    study_id=claimed.study_id,
                    generation=claimed.generation,
                    kind=r.kind,
                    sop_class_uid=r.sop_class_uid,
                    sop_instance_uid=r.sop_instance_uid,
                    file_path=r.file_path,
                    created_at=now,
                )
                for r in results
            ]
            session.add_all(rows)
            session.flush()
            deliveries = 0
            for destination in destinations:
                for row in rows:
                    if row.kind in destination.objects:
                        session.add(
                            Dispatch(
                                result_id=row.id,
                                destination=destination.name,
                                state=DeliveryState.PENDING,
                                attempts=0,
                                next_attempt_at=now,
                                updated_at=now,
                            )
                        )
                        deliveries += 1
            state = StudyState.DISPATCHING if deliveries else StudyState.DONE
            self._set_state(session, claimed, state, summary, now)
            if header_changes:
                session.add(
                    StudyEvent(
                        study_id=claimed.study_id,
                        at=now,
                        event=StudyEventName.HEADERS_CLEANED,
                        detail=header_changes,
                    )
                )
            session.add(
                StudyEvent(
                    study_id=claimed.study_id, at=now, event=StudyEventName.RESULTS, detail=summary
                )
            )
            return True

    def fail(self, claimed: ClaimedStudy, worker_id: str, reason: str) -> bool:
        now = self.clock()
        with Session(self.database) as session, session.begin():
            if not self._still_ours(session, claimed, worker_id):
                return False
            self._set_state(session, claimed, StudyState.FAILED, reason, now)
            session.add(
                StudyEvent(
                    study_id=claimed.study_id, at=now, event=StudyEventName.FAILED, detail=reason
                )
            )
            return True

    def renew_leases(self, worker_id: str, lease: timedelta) -> int:
        """Extend the lease of every study this worker holds (its heartbeat)."""
        with Session(self.database) as session, session.begin():
            result = session.execute(
                update(Study)
                .where(Study.state == StudyState.PROCESSING, Study.claimed_by == worker_id[:128])
                .values(lease_expires_at=self.clock() + lease)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def reclaim_expired(self, now: datetime | None = None) -> int:
        """Studies whose worker's lease ran out (it died, or its machine did) go back to READY."""
        now = now or self.clock()
        return self._release((Study.lease_expires_at < now,), now, "worker lease expired")

    def reclaim_dead_worker(self, worker_prefix: str, exit_description: str) -> int:
        """Studies held by a worker process known to have died go back to READY at once."""
        return self._release(
            (Study.claimed_by.startswith(worker_prefix, autoescape=True),),
            self.clock(),
            f"worker process {exit_description}",
        )

    def _release(self, where: tuple[Any, ...], now: datetime, detail: str) -> int:
        """Return PROCESSING studies matching ``where`` to READY, or end them FAILED when their
        workers have now died ``max_crashes`` times on them (an image that crashes a decoder
        must not take every worker down in turn, for ever)."""
        with Session(self.database) as session, session.begin():
            expired = session.execute(
                select(Study.id, Study.crashes)
                .where(Study.state == StudyState.PROCESSING, *where)
                .with_for_update(skip_locked=True)
            ).all()
            for study_id, crashes_before in expired:
                crashes = crashes_before + 1
                values: dict[str, Any] = {
                    "state": StudyState.READY,
                    "claimed_by": None,
                    "lease_expires_at": None,
                    "state_changed_at": now,
                    "crashes": crashes,
                }
                if crashes >= self.max_crashes:
                    values["state"] = StudyState.FAILED
                    values["reason"] = (
                        f"input or node fault: its worker stopped {crashes} times while processing "
                        f"it ({detail}); "
                        "an image may crash the decoder or the model: see the logs"
                    )
                session.execute(
                    update(Study)
                    .where(Study.id == study_id, Study.state == StudyState.PROCESSING)
                    .values(**values)
                )
                session.add(
                    StudyEvent(
                        study_id=study_id, at=now, event=StudyEventName.RECLAIMED, detail=detail
                    )
                )
                if values["state"] == StudyState.FAILED:
                    session.add(
                        StudyEvent(
                            study_id=study_id,
                            at=now,
                            event=StudyEventName.FAILED,
                            detail=values["reason"],
                        )
                    )
            return len(expired)

    @staticmethod
    def _still_ours(session: Session, claimed: ClaimedStudy, worker_id: str) -> bool:
        study = session.scalar(select(Study).where(Study.id == claimed.study_id).with_for_update())
        return (
            study is not None
            and study.state == StudyState.PROCESSING
            and study.generation == claimed.generation
            and study.claimed_by == worker_id[:128]
        )

    @staticmethod
    def _set_state(
        session: Session, claimed: ClaimedStudy, state: StudyState, reason: str, now: datetime
    ) -> None:
        session.execute(
            update(Study)
            .where(Study.id == claimed.study_id)
            .values(state=state, reason=reason, state_changed_at=now, lease_expires_at=None)
        )
