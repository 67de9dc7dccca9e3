"""Database side of processing a claimed study: its images, its results, its end state.

Every end state is a compare-and-set on (state PROCESSING, generation, claimed_by): a study that
was re-opened by a late image while it was being processed keeps its new state, and the work done
for the old generation is thrown away (its files removed by the caller); the new generation is
processed again. A worker renews the leases of its claims while it works (a heartbeat); a claim
whose lease ran out (its worker or its machine died) is returned to READY by ``reclaim_expired``,
which the completion tick runs, and ``serve`` returns the claims of a local worker process that
died at once (``reclaim_dead_worker``). A study on which workers died ``worker.max_crashes``
times ends FAILED instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from node.config import Destination
from node.db import Dispatch, Instance, Result, Study, StudyEvent, StudyState
from node.profiles import Role
from node.repository import ClaimedStudy, Clock, utcnow

# The event a study's history gets each time its worker died on it; counted for max_crashes.
RECLAIMED_EVENT = "reclaimed"


@dataclass(frozen=True)
class StudyImage:
    instance_id: int
    sop_instance_uid: str
    file_path: str


@dataclass(frozen=True)
class ResultFile:
    kind: str  # one of node.config.RESULT_KINDS: "sr", "sc", "summary", "gsps"
    sop_class_uid: str
    sop_instance_uid: str
    file_path: str


class ProcessingRepository:
    def __init__(self, engine: Engine, clock: Clock = utcnow, max_crashes: int = 3) -> None:
        self.engine = engine
        self.clock = clock
        self.max_crashes = max_crashes

    def images(self, claimed: ClaimedStudy) -> list[StudyImage]:
        """The study's analysed images of its study type, in arrival order."""
        with Session(self.engine) as session:
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
        with Session(self.engine) as session:
            return session.scalar(
                select(Result.file_path)
                .where(Result.study_id == study_id, Result.kind == "sr")
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
        with Session(self.engine) as session, session.begin():
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
                                state="PENDING",
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
                        event="headers cleaned",
                        detail=header_changes,
                    )
                )
            session.add(
                StudyEvent(study_id=claimed.study_id, at=now, event="results", detail=summary)
            )
            return True

    def fail(self, claimed: ClaimedStudy, worker_id: str, reason: str) -> bool:
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            if not self._still_ours(session, claimed, worker_id):
                return False
            self._set_state(session, claimed, StudyState.FAILED, reason, now)
            session.add(
                StudyEvent(study_id=claimed.study_id, at=now, event="failed", detail=reason)
            )
            return True

    def renew_leases(self, worker_id: str, lease: timedelta) -> int:
        """Extend the lease of every study this worker holds (its heartbeat)."""
        with Session(self.engine) as session, session.begin():
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
        with Session(self.engine) as session, session.begin():
            expired = session.scalars(
                select(Study.id)
                .where(Study.state == StudyState.PROCESSING, *where)
                .with_for_update(skip_locked=True)
            ).all()
            for study_id in expired:
                crashes = 1 + (
                    session.scalar(
                        select(func.count())
                        .select_from(StudyEvent)
                        .where(StudyEvent.study_id == study_id, StudyEvent.event == RECLAIMED_EVENT)
                    )
                    or 0
                )
                values: dict[str, Any] = {
                    "state": StudyState.READY,
                    "claimed_by": None,
                    "lease_expires_at": None,
                    "state_changed_at": now,
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
                    StudyEvent(study_id=study_id, at=now, event=RECLAIMED_EVENT, detail=detail)
                )
                if values["state"] == StudyState.FAILED:
                    session.add(
                        StudyEvent(
                            study_id=study_id, at=now, event="failed", detail=values["reason"]
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
