"""Database side of delivering results: which deliveries are due, and what happened to them.

A delivery (one result object to one destination) is PENDING, then SENDING while a dispatcher
holds it, then SENT once the destination acknowledged it (node.states.DeliveryState). A failure
makes it RETRY with an exponential back-off, and after ``dispatch.max_attempts`` DEAD
(dead-lettered, shown in `status`, re-queued by `mura-node retry`); node/deliver/retry.py holds that
policy. A SENDING delivery whose dispatcher died becomes due again when
its lease runs out. Once every delivery of a study is SENT, the study is DONE.

SENT is written only after the destination's response, so a delivery is never repeated after an
acknowledgement that was recorded; a crash between the response and the commit makes it go again
(the destination then sees the same SOP Instance UID twice, which PACS treat as a re-send).

``unanswered`` marks a delivery whose last attempt sent the data set and got no response: the
destination may hold it. The dispatcher asks before sending it again (C-FIND) where it can, and
records in the study's history what it did (``delivery confirmed``, or ``sent again`` with the
attempt).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from node.clock import Clock, utcnow
from node.db import Dispatch, Result, Study, StudyEvent
from node.deliver.retry import Retry
from node.states import DUE_DELIVERY_STATES, DeliveryState, ResultKind, StudyEventName, StudyState

Event = tuple[StudyEventName, str]  # a study event for the history: (event, detail)
# What the dispatcher did with a delivery whose last attempt got no response: the destination
# held it (C-FIND), or it was sent again without that confirmation.
AFTER_UNANSWERED = (StudyEventName.DELIVERY_CONFIRMED, StudyEventName.SENT_AGAIN)


@dataclass(frozen=True)
class Delivery:
    """One result object to send to one destination, as taken from the outbox."""

    id: int  # the dispatch row
    destination: str  # the destination's configured name
    file_path: str  # the result file, relative to the data directory
    sop_class_uid: str
    sop_instance_uid: str
    attempts: int  # attempts counted so far (each one failed, or it would be SENT)
    study_id: int
    kind: ResultKind = ResultKind.SR  # which result it is (its SOP class follows from it)
    unanswered: bool = False  # the last attempt sent the data set and got no response


class Outbox:
    """The deliveries in the database: take the due ones, record what became of them."""

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
                .where(Dispatch.state.in_(DUE_DELIVERY_STATES), Dispatch.next_attempt_at <= now)
                .order_by(Dispatch.next_attempt_at, Dispatch.id)
                .limit(limit)
                .with_for_update(skip_locked=True, of=Dispatch)
            ).all()
            taken = []
            for dispatch, result in rows:
                dispatch.state = DeliveryState.SENDING
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
                        ResultKind(result.kind),
                        dispatch.unanswered,
                    )
                )
            return taken

    def sent(self, delivery: Delivery, status: int, event: Event | None = None) -> None:
        """The destination acknowledged the object (``status``: success or a warning)."""
        self._sent(delivery, status, attempted=True, event=event)

    def confirmed(self, delivery: Delivery, event: Event) -> None:
        """The destination holds the object already (it said so to a C-FIND): SENT without
        another attempt."""
        self._sent(delivery, None, attempted=False, event=event)

    def release(self, delivery: Delivery) -> None:
        """Hand a taken delivery back, due now and without counting an attempt (its association
        ended before it was sent)."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(Dispatch)
                .where(Dispatch.id == delivery.id, Dispatch.state == DeliveryState.SENDING)
                .values(
                    state=DeliveryState.RETRY if delivery.attempts else DeliveryState.PENDING,
                    next_attempt_at=now,
                    updated_at=now,
                )
            )

    def _sent(
        self, delivery: Delivery, status: int | None, *, attempted: bool, event: Event | None
    ) -> None:
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(Dispatch)
                .where(Dispatch.id == delivery.id)
                .values(
                    state=DeliveryState.SENT,
                    last_status=status,
                    last_error=None,
                    unanswered=False,
                    attempts=Dispatch.attempts + (1 if attempted else 0),
                    updated_at=now,
                )
            )
            if event is not None:
                session.add(_event(delivery, now, event))
            open_left = session.scalar(
                select(func.count())
                .select_from(Dispatch)
                .join(Result, Result.id == Dispatch.result_id)
                .where(Result.study_id == delivery.study_id, Dispatch.state != DeliveryState.SENT)
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
                            event=StudyEventName.DONE,
                            detail="all results delivered",
                        )
                    )

    def failed(
        self,
        delivery: Delivery,
        status: int | None,
        error: str,
        retry: Retry,
        *,
        unanswered: bool | None = None,
        event: Event | None = None,
    ) -> DeliveryState:
        """Record a failed attempt; returns the new state: RETRY, due after ``retry``'s back-off,
        or DEAD once ``retry`` is exhausted. ``unanswered``: True when the attempt sent the data
        set and got no response, False when a response came, None when nothing was sent (the
        flag stays as it was)."""
        now = self.clock()
        attempts = delivery.attempts + 1
        due = retry.next_attempt_at(attempts, now)
        state = DeliveryState.DEAD if due is None else DeliveryState.RETRY
        values: dict[str, object] = {
            "state": state,
            "attempts": attempts,
            "last_status": status,
            "last_error": error[:500],
            "next_attempt_at": due,
            "updated_at": now,
        }
        if unanswered is not None:
            values["unanswered"] = unanswered
        with Session(self.engine) as session, session.begin():
            session.execute(update(Dispatch).where(Dispatch.id == delivery.id).values(**values))
            if event is not None:
                session.add(_event(delivery, now, event))
            if state == DeliveryState.DEAD:
                session.add(
                    StudyEvent(
                        study_id=delivery.study_id,
                        at=now,
                        event=StudyEventName.DEAD_LETTER,
                        detail=f"{delivery.destination}: {error[:200]} after {attempts} attempts",
                    )
                )
        return state

    def retry_dead(self) -> int:
        """Re-queue every dead-lettered delivery with a fresh count of attempts; returns how many.

        What had failed is kept: each row keeps its last status and error until its next
        attempt, and each study gets a ``re-queued`` event per destination that says which
        objects, after how many attempts, and the last error (`studies show`)."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            dead = session.execute(
                select(Dispatch, Result.study_id, Result.kind)
                .join(Result, Result.id == Dispatch.result_id)
                .where(Dispatch.state == DeliveryState.DEAD)
                .order_by(Result.study_id, Dispatch.destination, Dispatch.id)
                .with_for_update(of=Dispatch)
            ).all()
            groups: dict[tuple[int, str], list[tuple[Dispatch, str]]] = {}
            for dispatch, study_id, kind in dead:
                groups.setdefault((study_id, dispatch.destination), []).append((dispatch, kind))
            for (study_id, destination), rows in groups.items():
                session.add(
                    StudyEvent(
                        study_id=study_id,
                        at=now,
                        event=StudyEventName.REQUEUED,
                        detail=_requeued_detail(destination, rows)[:1000],
                    )
                )
            for dispatch, _study_id, _kind in dead:
                dispatch.state = DeliveryState.PENDING
                dispatch.attempts = 0
                dispatch.next_attempt_at = now
                dispatch.updated_at = now
            return len(dead)


def _requeued_detail(destination: str, rows: list[tuple[Dispatch, str]]) -> str:
    """The dead deliveries of one study to one destination in one line, such as
    ``PACS: 4 objects (sr, sc, summary) after 3 attempts; last error: <error>``."""
    kinds = ", ".join(dict.fromkeys(kind for _, kind in rows))
    attempts = sorted({d.attempts for d, _ in rows})
    tried = str(attempts[0]) if len(attempts) == 1 else f"{attempts[0]} to {attempts[-1]}"
    latest = max((d for d, _ in rows), key=lambda d: (d.updated_at, d.id))
    count = f"{len(rows)} object{'' if len(rows) == 1 else 's'}"
    return (
        f"{destination}: {count} ({kinds}) after {tried} attempts; "
        f"last error: {latest.last_error or '-'}"
    )


def _event(delivery: Delivery, now: datetime, event: Event) -> StudyEvent:
    return StudyEvent(study_id=delivery.study_id, at=now, event=event[0], detail=event[1][:1000])
