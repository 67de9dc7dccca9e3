"""Database side of delivering results: which deliveries are due, and what happened to them.

A delivery (one result object to one destination) is PENDING, then SENDING while a dispatcher
holds it, then SENT once the destination acknowledged it. A failure makes it RETRY with an
exponential back-off, and after ``dispatch.max_attempts`` DEAD (dead-lettered, shown in `status`,
re-queued by `mura-node retry`). A SENDING delivery whose dispatcher died becomes due again when
its lease runs out. Once every delivery of a study is SENT, the study is DONE.

SENT is written only after the destination's response, so a delivery is never repeated after an
acknowledgement that was recorded; a crash between the response and the commit makes it go again
(the destination then sees the same SOP Instance UID twice, which PACS treat as a re-send).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from node.db import Dispatch, Result, Study, StudyEvent, StudyState
from node.repository import Clock, utcnow

DUE_STATES = ("PENDING", "RETRY", "SENDING")


def retry_delay(attempts: int, first_s: float, max_s: float) -> timedelta:
    """Back-off after the ``attempts``-th failure: first_s, 2 first_s, 4 first_s ... max_s."""
    return timedelta(seconds=min(max_s, first_s * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class Delivery:
    id: int
    destination: str
    file_path: str
    sop_class_uid: str
    sop_instance_uid: str
    attempts: int
    study_id: int


class Outbox:
    def __init__(self, engine: Engine, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    def take_due(self, lease: timedelta, limit: int = 100) -> list[Delivery]:
        """Deliveries that are due, marked SENDING under a lease (so two dispatchers never send
        the same one at once)."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            rows = session.execute(
                select(Dispatch, Result)
                .join(Result, Result.id == Dispatch.result_id)
                .where(Dispatch.state.in_(DUE_STATES), Dispatch.next_attempt_at <= now)
                .order_by(Dispatch.next_attempt_at, Dispatch.id)
                .limit(limit)
                .with_for_update(skip_locked=True, of=Dispatch)
            ).all()
            taken = []
            for dispatch, result in rows:
                dispatch.state = "SENDING"
                dispatch.next_attempt_at = now + lease
                dispatch.updated_at = now
                taken.append(
                    Delivery(
                        dispatch.id,
                        dispatch.destination,
                        result.file_path,
                        result.sop_class_uid,
                        result.sop_instance_uid,
                        dispatch.attempts,
                        result.study_id,
                    )
                )
            return taken

    def sent(self, delivery: Delivery, status: int) -> None:
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(Dispatch)
                .where(Dispatch.id == delivery.id)
                .values(
                    state="SENT",
                    last_status=status,
                    last_error=None,
                    attempts=Dispatch.attempts + 1,
                    updated_at=now,
                )
            )
            open_left = session.scalar(
                select(func.count())
                .select_from(Dispatch)
                .join(Result, Result.id == Dispatch.result_id)
                .where(Result.study_id == delivery.study_id, Dispatch.state != "SENT")
            )
            if not open_left:
                done = session.execute(
                    update(Study)
                    .where(Study.id == delivery.study_id, Study.state == StudyState.DISPATCHING)
                    .values(state=StudyState.DONE, state_changed_at=now)
                )
                if done.rowcount:  # type: ignore[attr-defined]
                    session.add(
                        StudyEvent(
                            study_id=delivery.study_id,
                            at=now,
                            event="done",
                            detail="all results delivered",
                        )
                    )

    def failed(
        self,
        delivery: Delivery,
        status: int | None,
        error: str,
        max_attempts: int,
        first_s: float,
        max_s: float,
    ) -> str:
        """Record a failed attempt; returns the new state (RETRY or DEAD)."""
        now = self.clock()
        attempts = delivery.attempts + 1
        state = "DEAD" if attempts >= max_attempts else "RETRY"
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(Dispatch)
                .where(Dispatch.id == delivery.id)
                .values(
                    state=state,
                    attempts=attempts,
                    last_status=status,
                    last_error=error[:500],
                    next_attempt_at=None
                    if state == "DEAD"
                    else now + retry_delay(attempts, first_s, max_s),
                    updated_at=now,
                )
            )
            if state == "DEAD":
                session.add(
                    StudyEvent(
                        study_id=delivery.study_id,
                        at=now,
                        event="dead letter",
                        detail=f"{delivery.destination}: {error[:200]} after {attempts} attempts",
                    )
                )
        return state

    def retry_dead(self) -> int:
        """Re-queue every dead-lettered delivery; returns how many."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(Dispatch)
                .where(Dispatch.state == "DEAD")
                .values(state="PENDING", attempts=0, next_attempt_at=now, updated_at=now)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]
