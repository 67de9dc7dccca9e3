"""The complete role's side of the queue: apply the completion rule to the RECEIVING studies.

`node.complete.completion` decides, purely, which studies have fully arrived; this module reads what that
decision needs (for release-triggered completion, also the associations node/receive/associations.py
recorded), and moves each complete study to READY (an eligible study of a known type) or
IGNORED (with the reason from `node.complete.eligibility`), with an event in its history. Each study is
decided in its own transaction, as a compare-and-set on (state RECEIVING, last_received_at,
generation): an instance that arrives between the read and the decision wins, and the next tick
decides again. Several schedulers, in several processes or on several machines, can therefore tick
at once against one database.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, delete, or_, select
from sqlalchemy.orm import Session

from node.clock import Clock, utcnow
from node.complete.completion import (
    ArrivalTimes,
    CompletionPolicy,
    CompletionReason,
    Delivery,
    complete_studies,
    completion_reason,
    waits_for_image_in_flight,
)
from node.complete.eligibility import decide_eligibility
from node.db import Association, Instance, Study, StudyEvent
from node.profiles import Role, Vocabulary
from node.states import AssociationEnding, StudyEventName, StudyState

# The descriptive attributes eligibility reads from each image, in the order of its facts.
DESCRIPTIVE_FIELDS = (
    "AnatomicRegionSequence",
    "BodyPartExamined",
    "ProtocolName",
    "SeriesDescription",
    "StudyDescription",
)
# The history event of each state a complete study moves to.
_DECIDED = {StudyState.READY: StudyEventName.READY, StudyState.IGNORED: StudyEventName.IGNORED}


@dataclass(frozen=True)
class CompletionOutcome:
    """A study that completed in this tick: its new state (READY or IGNORED), the study type
    eligibility found (None when none was) and the reason eligibility gave."""

    study_id: int
    study_instance_uid: str
    state: StudyState
    study_type: str | None
    reason: str


class Completer:
    """Completes the RECEIVING studies of the queue in ``engine`` (a SQLAlchemy engine) at the
    time ``clock`` gives (aware UTC)."""

    def __init__(self, engine: Engine, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    def complete_studies(
        self, policy: CompletionPolicy, vocabulary: Vocabulary
    ) -> list[CompletionOutcome]:
        """Move every RECEIVING study whose arrival has settled to READY or IGNORED, oldest
        first; returns what changed. A study only a hold keeps open gets a "held" event, once
        per generation."""
        now = self.clock()
        with Session(self.engine) as session:
            rows = session.execute(
                select(
                    Study.id,
                    Study.opened_at,
                    Study.last_received_at,
                    Study.generation,
                    Study.held_until,
                ).where(Study.state == StudyState.RECEIVING)
            ).all()
            released = _release_facts(session, policy, Study.state == StudyState.RECEIVING)
        seen = {row.id: (row.last_received_at, row.generation) for row in rows}
        arrivals = [
            ArrivalTimes(
                row.id,
                row.opened_at,
                row.last_received_at,
                row.held_until,
                *released.get(row.id, ((), frozenset())),
            )
            for row in rows
        ]
        for arrival in arrivals:
            if waits_for_image_in_flight(arrival, now, policy):
                quiet = now - arrival.last_received_at >= policy.quiet_period
                self._note_held(arrival, "quiet period" if quiet else "settle time after release")
        outcomes = []
        for completion in complete_studies(arrivals, now, policy):
            last, generation = seen[completion.study_id]
            outcome = self._complete_one(
                completion.study_id, last, generation, completion.reason, vocabulary, policy
            )
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _complete_one(
        self,
        study_id: int,
        last: datetime,
        generation: int,
        why: CompletionReason,
        vocabulary: Vocabulary,
        policy: CompletionPolicy | None = None,
    ) -> CompletionOutcome | None:
        """Complete one study that the tick found complete for ``why``, unless something arrived
        or began to arrive since (then None: the next tick decides). ``policy`` is needed for
        RELEASED, whose associations are read again under the lock."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            study = session.scalar(select(Study).where(Study.id == study_id).with_for_update())
            if (
                study is None
                or study.state != StudyState.RECEIVING
                or study.last_received_at != last
                or study.generation != generation
            ):
                return None  # an instance arrived meanwhile; the next tick decides
            arrival = ArrivalTimes(
                study.id, study.opened_at, study.last_received_at, study.held_until
            )
            held = arrival.held(now)
            if held and why is not CompletionReason.FORCED:
                return None  # an image began to arrive meanwhile; the next tick decides
            if why is CompletionReason.RELEASED:
                # An association may have begun to deliver since the tick read the queue.
                assert policy is not None
                deliveries, senders = _release_facts(session, policy, Study.id == study_id).get(
                    study_id, ((), frozenset())
                )
                arrival = replace(arrival, deliveries=deliveries, senders=senders)
                if completion_reason(arrival, now, policy) is not CompletionReason.RELEASED:
                    return None
            instances = session.scalars(
                select(Instance).where(Instance.study_id == study_id).order_by(Instance.id)
            ).all()
            images = [i for i in instances if i.role == Role.ANALYSE]
            facts = [
                dict(
                    zip(
                        DESCRIPTIVE_FIELDS,
                        (
                            i.anatomic_region,
                            i.body_part_examined,
                            i.protocol_name,
                            i.series_description,
                            i.study_description,
                        ),
                        strict=True,
                    )
                )
                for i in images
            ]
            eligibility, verdicts = decide_eligibility(
                facts, vocabulary, len(instances) - len(images)
            )
            for image, verdict in zip(images, verdicts, strict=True):
                image.study_type = (
                    verdict.study_type if verdict.study_type == eligibility.study_type else None
                )
            state = StudyState.READY if eligibility.eligible else StudyState.IGNORED
            study.state = state
            study.study_type = eligibility.study_type
            study.reason = eligibility.reason
            study.state_changed_at = now
            study.held_until = None
            label = _completion_label(session, study, why, held, arrival, policy)
            session.add(
                StudyEvent(
                    study_id=study_id,
                    at=now,
                    event=_DECIDED[state],
                    detail=f"{label}; {eligibility.reason}",
                )
            )
            # The ended associations of this generation decide nothing any more.
            session.execute(
                delete(Association).where(
                    Association.study_instance_uid == study.study_instance_uid,
                    Association.ended_at.is_not(None),
                )
            )
            return CompletionOutcome(
                study_id,
                study.study_instance_uid,
                state,
                eligibility.study_type,
                eligibility.reason,
            )

    def _note_held(self, study: ArrivalTimes, rule: str = "quiet period") -> None:
        """Record, once per generation, that the ``rule``'s time (the quiet period, or the settle
        time after the release) passed while an image of the study was still arriving (the
        study waits for it)."""
        now = self.clock()
        with Session(self.engine) as session, session.begin():
            state = session.scalar(
                select(Study.state).where(Study.id == study.study_id).with_for_update()
            )
            if state != StudyState.RECEIVING or _waited_for_image(
                session, study.study_id, study.opened_at
            ):
                return
            session.add(
                StudyEvent(
                    study_id=study.study_id,
                    at=now,
                    event=StudyEventName.HELD,
                    detail=f"{rule} passed while an image was still being received; waiting for it",
                )
            )


def _waited_for_image(session: Session, study_id: int, opened_at: datetime) -> bool:
    """Whether this generation of the study has waited for an image in flight."""
    found = session.scalar(
        select(StudyEvent.id)
        .where(
            StudyEvent.study_id == study_id,
            StudyEvent.event == StudyEventName.HELD,
            StudyEvent.at >= opened_at,
        )
        .limit(1)
    )
    return found is not None


def _release_facts(
    session: Session, policy: CompletionPolicy, which: ColumnElement[bool]
) -> dict[int, tuple[tuple[Delivery, ...], frozenset[str]]]:
    """For release-triggered completion, per study id among the studies ``which`` selects: the
    recorded associations of its current generation (open, or ended since it was opened) and the
    calling AE titles of its instances received since then. Empty, without a query, when no
    release-trigger sender is configured."""
    if not policy.release_trigger_aes:
        return {}
    deliveries: dict[int, list[Delivery]] = {}
    for row in session.execute(
        select(Study.id, Association.calling_ae_title, Association.ending, Association.ended_at)
        .join(Association, Association.study_instance_uid == Study.study_instance_uid)
        .where(which, or_(Association.ended_at.is_(None), Association.ended_at >= Study.opened_at))
        .order_by(Association.id)
    ):
        ending = None if row.ending is None else AssociationEnding(row.ending)
        deliveries.setdefault(row.id, []).append(
            Delivery(row.calling_ae_title, ending, row.ended_at)
        )
    if not deliveries:
        return {}
    senders: dict[int, set[str]] = {}
    for sender in session.execute(
        select(Study.id, Instance.calling_ae_title)
        .distinct()
        .join(Instance, Instance.study_id == Study.id)
        .where(which, Study.id.in_(sorted(deliveries)), Instance.received_at >= Study.opened_at)
    ):
        senders.setdefault(sender.id, set()).add(sender.calling_ae_title)
    return {
        study_id: (tuple(found), frozenset(senders.get(study_id, ())))
        for study_id, found in deliveries.items()
    }


def _completion_label(
    session: Session,
    study: Study,
    why: CompletionReason,
    held: bool,
    arrival: ArrivalTimes,
    policy: CompletionPolicy | None,
) -> str:
    """The first part of the completion event's detail: which rule, and any wait for an image."""
    if why is CompletionReason.FORCED:
        if held:
            return "force timeout passed while an image was still being received"
        return "force timeout passed"
    waited = _waited_for_image(session, study.id, study.opened_at)
    if why is CompletionReason.RELEASED:
        assert policy is not None
        senders = ", ".join(sorted({d.calling_ae_title for d in arrival.deliveries}))
        settle = policy.release_settle.total_seconds()
        label = f"released by {senders} after {settle:g} s settle"
        return f"{label}, after waiting for an image in flight" if waited else label
    if waited:
        return "quiet period passed after waiting for an image in flight"
    return "quiet period passed"
