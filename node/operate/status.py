"""`mura-node status` and `mura-node studies show`: the reports, read from the database (works
while `serve` runs) into the typed values of node/operate/reports.py; node/operate/status_view.py draws them.

No patient name, ID or other patient data is read; studies are shown by the shortest end of the
StudyInstanceUID that names one study in the whole database (``…`` and the tail; the full UID is in
``--json``, for scripts), so that `studies show` finds the study from what `status` printed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from types import MappingProxyType

from sqlalchemy import Engine, case, func, or_, select
from sqlalchemy.orm import Session

from node.clock import ELLIPSIS, shown_tail, unique_tails
from node.config_sections import ModelConfig
from node.db import Dispatch, IngestRejection, Instance, Result, Study, StudyEvent
from node.deliver.outbox import AFTER_UNANSWERED
from node.metrics import state_counts
from node.operate.reports import (
    AmbiguousStudy,
    DeadLetter,
    DeliveryRow,
    HistoryEvent,
    InstanceCounts,
    InstanceRow,
    QueueReport,
    Rejection,
    Rejections,
    ResultRow,
    StudyDetail,
    StudyRow,
    UnansweredEvent,
    WaitingStudy,
)
from node.profiles import Role
from node.states import DeliveryState, StudyState

WAITING = (StudyState.RECEIVING, StudyState.READY, StudyState.PROCESSING, StudyState.DISPATCHING)


SHORTEST_TAIL = 6  # characters: the least of a UID's end that `status` shows


def _short_names(session: Session, uids: set[str]) -> dict[str, str]:
    """``{uid: shown name}``: each UID's shortest tail that no other study's UID in the database
    ends with, starts with or equals (node/clock.py ``unique_tails``), ``…`` before it.

    One query finds every study that ends like a shown one (all that a longer tail can collide
    with); each further query adds the studies whose UID starts with a chosen tail, until none
    does. Both are LIKE scans of ``studies``, run once per report."""
    if not uids:
        return {}
    uid = Study.study_instance_uid
    others = set(
        session.scalars(
            select(uid).where(
                or_(*(uid.endswith(u[-SHORTEST_TAIL:], autoescape=True) for u in uids))
            )
        )
    )
    while True:
        tails = unique_tails(uids, others, keep=SHORTEST_TAIL)
        starting = set(
            session.scalars(
                select(uid).where(
                    or_(*(uid.startswith(t, autoescape=True) for t in set(tails.values())))
                )
            )
        )
        if starting <= others | uids:
            return {u: shown_tail(u, tail) for u, tail in tails.items()}
        others |= starting


def _study_row(study: Study, images: int, others: int, names: dict[str, str]) -> StudyRow:
    return StudyRow(
        study=names[study.study_instance_uid],
        study_instance_uid=study.study_instance_uid,
        study_type=study.study_type,
        images=images,
        other_objects=others,
        state=study.state,
        generation=study.generation,
        first_received_at=study.first_received_at,
        opened_at=study.opened_at,
        reopened_at=study.opened_at if study.generation > 1 else None,
        last_received_at=study.last_received_at,
        state_changed_at=study.state_changed_at,
        reason=study.reason,
    )


def collect_status(
    engine: Engine,
    now: datetime,
    limit: int = 20,
    only_state: str | None = None,
    only_study: str | None = None,
    model_untrained: bool = False,
) -> QueueReport:
    """The queue at ``now``: counts by state, the oldest waiting study, the ``limit`` latest
    studies (only those in state ``only_state`` and whose UID contains ``only_study``, when
    given), failed studies, dead letters, and what happened in the last 24 hours.

    ``model_untrained``: the configured model has random weights (``model.allow_untrained``
    without ``model.cards``, see :func:`untrained_model`); the report says so first."""
    with Session(engine) as session:
        counts, deliveries = state_counts(session)
        stored, ignored = session.execute(
            select(
                func.coalesce(func.sum(case((Instance.role == Role.ANALYSE, 1), else_=0)), 0),
                func.coalesce(func.sum(case((Instance.role == Role.IGNORE, 1), else_=0)), 0),
            )
        ).one()
        oldest = session.scalar(
            select(Study)
            .where(Study.state.in_(WAITING))
            .order_by(Study.opened_at, Study.id)
            .limit(1)
        )
        listed = select(Study)
        if only_state:
            listed = listed.where(Study.state == only_state.upper())
        if only_study:
            listed = listed.where(Study.study_instance_uid.contains(only_study))
        recent = session.scalars(
            listed.order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)
        ).all()
        failed = session.scalars(
            select(Study)
            .where(Study.state == StudyState.FAILED)
            .order_by(Study.state_changed_at.desc())
            .limit(limit)
        ).all()
        ids = {s.id for s in (*recent, *failed)}
        per_study: dict[int, tuple[int, int]] = {}
        if ids:
            rows = session.execute(
                select(
                    Instance.study_id,
                    func.sum(case((Instance.role == Role.ANALYSE, 1), else_=0)),
                    func.sum(case((Instance.role == Role.IGNORE, 1), else_=0)),
                )
                .where(Instance.study_id.in_(ids))
                .group_by(Instance.study_id)
            )
            per_study = {row[0]: (int(row[1] or 0), int(row[2] or 0)) for row in rows}
        since = now - timedelta(hours=24)
        rejected = session.scalar(select(func.count()).where(IngestRejection.at >= since)) or 0
        rejections = session.scalars(
            select(IngestRejection)
            .where(IngestRejection.at >= since)
            .order_by(IngestRejection.at.desc())
            .limit(limit)
        ).all()
        after_unanswered = session.execute(
            select(StudyEvent, Study.study_instance_uid)
            .join(Study, Study.id == StudyEvent.study_id)
            .where(StudyEvent.event.in_(AFTER_UNANSWERED), StudyEvent.at >= since)
            .order_by(StudyEvent.at.desc(), StudyEvent.id.desc())
            .limit(limit)
        ).all()
        dead = session.execute(
            select(Dispatch, Result.kind, Study.study_instance_uid)
            .join(Result, Result.id == Dispatch.result_id)
            .join(Study, Study.id == Result.study_id)
            .where(Dispatch.state == DeliveryState.DEAD)
            .order_by(Dispatch.updated_at.desc())
            .limit(limit)
        ).all()
        names = _short_names(
            session,
            {s.study_instance_uid for s in (*recent, *failed)}
            | {str(row[-1]) for row in (*dead, *after_unanswered)}
            | ({oldest.study_instance_uid} if oldest else set()),
        )
        return QueueReport(
            generated_at=now,
            model_untrained=model_untrained,
            deliveries=MappingProxyType(deliveries),
            dead_letters=tuple(
                DeadLetter(
                    study=names[uid],
                    study_instance_uid=uid,
                    kind=kind,
                    destination=d.destination,
                    attempts=d.attempts,
                    last_error=d.last_error,
                    since=d.updated_at,
                )
                for d, kind, uid in dead
            ),
            after_unanswered=tuple(
                UnansweredEvent(at=e.at, study=names[uid], event=e.event, detail=e.detail)
                for e, uid in after_unanswered
            ),
            studies_by_state=MappingProxyType(counts),
            instances=InstanceCounts(stored=int(stored), ignored=int(ignored)),
            oldest_waiting=None
            if oldest is None
            else WaitingStudy(
                study=names[oldest.study_instance_uid],
                study_instance_uid=oldest.study_instance_uid,
                state=oldest.state,
                since=oldest.opened_at,
                waiting_s=round((now - oldest.opened_at).total_seconds(), 1),
            ),
            recent_studies=tuple(
                _study_row(s, *per_study.get(s.id, (0, 0)), names) for s in recent
            ),
            failed_studies=tuple(
                _study_row(s, *per_study.get(s.id, (0, 0)), names) for s in failed
            ),
            rejected_last_24h=Rejections(
                count=int(rejected),
                recent=tuple(
                    Rejection(
                        at=r.at,
                        calling_ae_title=r.calling_ae_title,
                        status=r.status,
                        reason=r.reason,
                    )
                    for r in rejections
                ),
            ),
        )


def untrained_model(model: ModelConfig) -> bool:
    """Whether the configured model runs with random weights: ``model.allow_untrained`` and no
    ``model.cards`` (the engine is then untrained, node/inference/engine.py, and every result
    says so). A card always holds trained weights: loading it verifies their SHA-256."""
    return model.allow_untrained and not model.cards


def study_history(engine: Engine, uid_or_prefix: str) -> StudyDetail | AmbiguousStudy | None:
    """Everything the node knows about one study: its row, instances, history, results and
    deliveries (no patient data). The whole StudyInstanceUID, or a prefix or suffix of it that
    no other study's UID has, such as the name `status` shows (its leading ``…`` is optional);
    None when no study matches, the matching UIDs when more than one does and none is exactly
    ``uid_or_prefix``."""
    fragment = uid_or_prefix.strip().removeprefix(ELLIPSIS).removeprefix("...")
    uid = Study.study_instance_uid
    with Session(engine) as session:
        matches = session.scalars(
            select(Study).where(
                (uid == fragment)
                | uid.startswith(fragment, autoescape=True)
                | uid.endswith(fragment, autoescape=True)
            )
        ).all()
        exact = [s for s in matches if s.study_instance_uid == fragment]
        matches = exact or matches
        if len(matches) != 1:
            if not matches:
                return None
            return AmbiguousStudy(tuple(s.study_instance_uid for s in matches))
        study = matches[0]
        instances = session.scalars(
            select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)
        ).all()
        events = session.scalars(
            select(StudyEvent).where(StudyEvent.study_id == study.id).order_by(StudyEvent.id)
        ).all()
        results = session.scalars(
            select(Result).where(Result.study_id == study.id).order_by(Result.id)
        ).all()
        deliveries = session.execute(
            select(Dispatch, Result.kind)
            .join(Result, Result.id == Dispatch.result_id)
            .where(Result.study_id == study.id)
            .order_by(Dispatch.id)
        ).all()
        return StudyDetail(
            study_instance_uid=study.study_instance_uid,
            state=study.state,
            study_type=study.study_type,
            reason=study.reason,
            generation=study.generation,
            first_received_at=study.first_received_at,
            instances=tuple(
                InstanceRow(
                    sop_instance_uid=i.sop_instance_uid,
                    role=i.role,
                    sop_class_uid=i.sop_class_uid,
                    transfer_syntax_uid=i.transfer_syntax_uid,
                    calling_ae_title=i.calling_ae_title,
                    received_at=i.received_at,
                    revision=i.revision,
                    body_part_examined=i.body_part_examined,
                    anatomic_region=i.anatomic_region,
                    study_type=i.study_type,
                )
                for i in instances
            ),
            history=tuple(HistoryEvent(at=e.at, event=e.event, detail=e.detail) for e in events),
            results=tuple(
                ResultRow(
                    kind=r.kind,
                    generation=r.generation,
                    sop_instance_uid=r.sop_instance_uid,
                    file_path=r.file_path,
                )
                for r in results
            ),
            deliveries=tuple(
                DeliveryRow(
                    kind=kind,
                    destination=d.destination,
                    state=d.state,
                    attempts=d.attempts,
                    last_status=d.last_status,
                    last_error=d.last_error,
                    unanswered=d.unanswered,
                    updated_at=d.updated_at,
                )
                for d, kind in deliveries
            ),
        )
