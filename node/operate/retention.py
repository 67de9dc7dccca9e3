"""Retention: received images and results are removed once delivered, after a waiting period.

The node is not an archive: the PACS holds the images and, once delivered, the results. A study
is purged ``storage.retention_days`` after it reached DONE with every delivery acknowledged, or
after it was IGNORED (not a study the node analyses). FAILED studies, studies still waiting for
a destination and DONE studies without any destination (whose results exist only here) are kept.

Purging a study removes its instance and result files, clears the instances' file names and
stamps ``studies.purged_at``, in one transaction per study; the files go after the commit (a
crash in between leaves unreferenced files, never a row naming a missing image). The rows stay:
`status` and `studies show` keep the history. An instance re-sent after the purge is stored
again and re-opens the study, which is then processed again from what has arrived anew.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import Engine, exists, select, update
from sqlalchemy.orm import Session

from node.clock import Clock, utcnow
from node.db import Dispatch, Instance, Result, Study, StudyEvent
from node.states import StudyEventName, StudyState
from node.storage import FileStore

log = logging.getLogger(__name__)


def purge_delivered(
    engine: Engine, store: FileStore, retention: timedelta, clock: Clock = utcnow, limit: int = 200
) -> int:
    """Purge the studies whose retention period is over; return how many were purged."""
    now = clock()
    delivered = exists().where(Result.study_id == Study.id, Dispatch.result_id == Result.id)
    with Session(engine) as session:
        due = session.scalars(
            select(Study.id)
            .where(
                Study.purged_at.is_(None),
                Study.state_changed_at <= now - retention,
                ((Study.state == StudyState.DONE) & delivered)
                | (Study.state == StudyState.IGNORED),
            )
            .order_by(Study.state_changed_at)
            .limit(limit)
        ).all()
    purged = 0
    for study_id in due:
        files = _purge_study(engine, study_id, now - retention, now)
        if files is None:
            continue
        for relative in files:
            store.remove(relative)
        purged += 1
    if purged:
        log.info("purged the files of %d delivered or ignored study(ies)", purged)
    return purged


def _purge_study(
    engine: Engine, study_id: int, cutoff: datetime, now: datetime
) -> list[str] | None:
    with Session(engine) as session, session.begin():
        study = session.scalar(
            select(Study)
            .where(Study.id == study_id, Study.purged_at.is_(None))
            .with_for_update(skip_locked=True)
        )
        if study is None or study.state not in (StudyState.DONE, StudyState.IGNORED):
            return None  # changed since it was selected (a late image re-opened it)
        if study.state_changed_at > cutoff:
            return None
        files = [
            path
            for path in session.scalars(
                select(Instance.file_path).where(
                    Instance.study_id == study_id, Instance.file_path.is_not(None)
                )
            )
            if path
        ]
        files += list(session.scalars(select(Result.file_path).where(Result.study_id == study_id)))
        session.execute(
            update(Instance).where(Instance.study_id == study_id).values(file_path=None)
        )
        study.purged_at = now
        session.add(
            StudyEvent(
                study_id=study_id,
                at=now,
                event=StudyEventName.PURGED,
                detail=f"{len(files)} file(s) removed",
            )
        )
        return files
