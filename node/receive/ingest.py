"""The receive role's records: arrivals, rejected C-STOREs and holds on studies in flight.

Every method is one short transaction, and every state change is a compare-and-set on the row
(SQLite: ``BEGIN IMMEDIATE`` serialises writers; PostgreSQL: ``SELECT ... FOR UPDATE``), so several
SCP threads, in several processes or on several machines, can share one database with the
schedulers and workers without losing an arrival.

Rules for arrivals (see docs/ingest.md):

* same SOPInstanceUID, same bytes: nothing changes (a re-send is a no-op success);
* same SOPInstanceUID, different bytes: the new version replaces the old one and counts as a new
  arrival (so the study is looked at again);
* a CR/DX arrival for a study that is past RECEIVING re-opens it (new generation);
* objects of other SOP classes are recorded but never open or re-open a study, so the node's own
  results coming back from the PACS cannot start a loop.

Deciding that a study has fully arrived is the complete role's (node/complete/completer.py); claiming and
processing it, the work role's (node/work/processing.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from node.clock import Clock, utcnow
from node.db import IngestRejection, Instance, Study, StudyEvent
from node.profiles import Role
from node.states import IngestOutcome, StudyEventName, StudyState

log = logging.getLogger(__name__)

_STUDIES = cast(Table, Study.__table__)
_INSTANCES = cast(Table, Instance.__table__)
_EVENTS = cast(Table, StudyEvent.__table__)


@dataclass(frozen=True)
class InstanceRecord:
    """What the SCP learned from one received data set (header only)."""

    study_instance_uid: str
    series_instance_uid: str | None
    sop_instance_uid: str
    sop_class_uid: str
    role: Role
    transfer_syntax_uid: str
    size_bytes: int
    calling_ae_title: str
    modality: str | None = None
    body_part_examined: str | None = None
    protocol_name: str | None = None
    series_description: str | None = None
    study_description: str | None = None
    anatomic_region: str | None = None  # "SCHEME:CODE", see node.profiles.coded_region


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    study_id: int
    obsolete_file: str | None  # a replaced version's file, to delete after commit
    reopened: bool


class IngestRecords:
    """What the SCP writes to the study queue: received instances, rejections and holds.

    ``engine`` is the SQLAlchemy engine of the queue database; ``clock`` gives the aware UTC
    time stamped on every row."""

    def __init__(self, engine: Engine, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock

    # -- arrivals -------------------------------------------------------------------------------

    def record_instance(
        self,
        record: InstanceRecord,
        file_path: str | None,
        same_content: Callable[[str | None], bool],
        before_commit: Callable[[], object] = lambda: None,
    ) -> IngestResult:
        """Record one received instance; retried when a concurrent insert wins the race.

        ``same_content(stored_file_path)`` tells whether an already recorded version of this
        SOP instance has exactly the received bytes (then nothing changes). ``before_commit`` runs
        after the statements and before COMMIT; if it raises, nothing is committed (the SCP waits
        there for the file to be durable, so both proceed in parallel)."""
        common = self._record_common_case(record, file_path, before_commit)
        if common is not None:
            return common
        for attempt in range(3):
            try:
                return self._record_instance(record, file_path, same_content, before_commit)
            except IntegrityError:
                if attempt == 2:
                    raise
                log.debug("concurrent insert for the same study or instance; retrying")
        raise AssertionError("unreachable")  # pragma: no cover

    def _record_common_case(
        self, record: InstanceRecord, file_path: str | None, before_commit: Callable[[], object]
    ) -> IngestResult | None:
        """A new instance of a study that is still receiving: two prebuilt statements, or None
        to say that the general path must decide (new study, re-opening, re-send)."""
        now = self.clock()
        if self.engine.dialect.name not in _INSERT_NEW_INSTANCE:
            return None
        with self.engine.connect() as conn:
            transaction = conn.begin()
            try:
                study_id = conn.execute(
                    _TOUCH_RECEIVING_STUDY, {"uid": record.study_instance_uid, "now": now}
                ).scalar()
                if study_id is None:
                    transaction.rollback()
                    return None
                values = _instance_values(record, file_path, study_id, now)
                inserted = conn.execute(
                    _insert_new_instance(conn), {**values, "revision": 1}
                ).scalar()
                if inserted is None:
                    transaction.rollback()
                    return None
                before_commit()
                transaction.commit()
            except BaseException:
                if transaction.is_active:
                    transaction.rollback()
                raise
        return IngestResult(IngestOutcome.STORED, study_id, None, False)

    def _record_instance(
        self,
        record: InstanceRecord,
        file_path: str | None,
        same_content: Callable[[str | None], bool],
        before_commit: Callable[[], object],
    ) -> IngestResult:
        # The general path: new studies, re-opening, re-sends (SQLAlchemy Core).
        now = self.clock()
        studies, instances = _STUDIES, _INSTANCES
        with self.engine.begin() as conn:
            existing = conn.execute(
                select(
                    instances.c.id,
                    instances.c.study_id,
                    instances.c.file_path,
                    instances.c.revision,
                )
                .where(instances.c.sop_instance_uid == record.sop_instance_uid)
                .with_for_update()
            ).first()
            if existing is not None and same_content(existing.file_path):
                return IngestResult(IngestOutcome.DUPLICATE, existing.study_id, None, False)
            study = conn.execute(
                select(studies.c.id, studies.c.state)
                .where(studies.c.study_instance_uid == record.study_instance_uid)
                .with_for_update()
            ).first()
            reopened = False
            if study is None:
                study_id = conn.execute(
                    insert(studies)
                    .values(
                        study_instance_uid=record.study_instance_uid,
                        state=StudyState.RECEIVING,
                        generation=1,
                        first_received_at=now,
                        opened_at=now,
                        last_received_at=now,
                        state_changed_at=now,
                    )
                    .returning(studies.c.id)
                ).scalar_one()
                _add_event(
                    conn,
                    study_id,
                    now,
                    StudyEventName.OPENED,
                    f"first instance from {record.calling_ae_title}",
                )
            else:
                study_id = study.id
                if record.role is Role.ANALYSE and study.state != StudyState.RECEIVING:
                    _add_event(
                        conn,
                        study_id,
                        now,
                        StudyEventName.REOPENED,
                        f"new image after {study.state}",
                    )
                    conn.execute(
                        update(studies)
                        .where(studies.c.id == study_id)
                        .values(
                            state=StudyState.RECEIVING,
                            generation=studies.c.generation + 1,
                            opened_at=now,
                            last_received_at=now,
                            state_changed_at=now,
                            study_type=None,
                            reason=None,
                            claimed_by=None,
                            lease_expires_at=None,
                            purged_at=None,
                            held_until=None,
                        )
                    )
                    reopened = True
                elif record.role is Role.ANALYSE or study.state == StudyState.RECEIVING:
                    conn.execute(
                        update(studies).where(studies.c.id == study_id).values(last_received_at=now)
                    )
            values = _instance_values(record, file_path, study_id, now)
            if existing is None:
                conn.execute(insert(instances).values(**values, revision=1))
                before_commit()
                return IngestResult(IngestOutcome.STORED, study_id, None, reopened)
            obsolete = existing.file_path if existing.file_path != file_path else None
            if existing.study_id != study_id:
                _add_event(
                    conn,
                    existing.study_id,
                    now,
                    StudyEventName.INSTANCE_MOVED,
                    "a new version names another study",
                )
            _add_event(
                conn,
                study_id,
                now,
                StudyEventName.INSTANCE_REPLACED,
                f"revision {existing.revision + 1}",
            )
            conn.execute(
                update(instances)
                .where(instances.c.id == existing.id)
                .values(**values, revision=existing.revision + 1)
            )
            before_commit()
            return IngestResult(IngestOutcome.REPLACED, study_id, obsolete, reopened)

    def record_rejection(self, calling_ae_title: str, status: int, reason: str) -> None:
        """Best effort: a database that is down must not turn a rejection into an exception."""
        try:
            with Session(self.engine) as session, session.begin():
                session.add(
                    IngestRejection(
                        at=self.clock(),
                        calling_ae_title=calling_ae_title[:16],
                        status=status,
                        reason=reason,
                    )
                )
        except (OperationalError, IntegrityError) as exc:
            log.warning("could not record a rejected C-STORE: %s", exc.__class__.__name__)

    # -- holds ----------------------------------------------------------------------------------

    def hold_studies(self, study_instance_uids: Collection[str], lease: timedelta) -> int:
        """Hold the RECEIVING studies among ``study_instance_uids`` (an image of each is being
        received) until ``lease`` from now, in one UPDATE; returns how many were held.

        The SCP renews the hold while the data set is in flight and never clears it: it lapses by
        itself ``lease`` after the last renewal (data set stored, association ended, SCP gone)."""
        if not study_instance_uids:
            return 0
        until = self.clock() + lease
        with self.engine.begin() as conn:
            held = conn.execute(
                update(_STUDIES)
                .where(
                    _STUDIES.c.study_instance_uid.in_(sorted(study_instance_uids)),
                    _STUDIES.c.state == StudyState.RECEIVING.value,
                )
                .values(held_until=until)
            )
        return int(held.rowcount)


def _instance_values(
    record: InstanceRecord, file_path: str | None, study_id: int, now: datetime
) -> dict[str, object]:
    return {
        "study_id": study_id,
        "sop_instance_uid": record.sop_instance_uid,
        "sop_class_uid": record.sop_class_uid,
        "series_instance_uid": record.series_instance_uid,
        "role": str(record.role),
        "transfer_syntax_uid": record.transfer_syntax_uid,
        "file_path": file_path,
        "size_bytes": record.size_bytes,
        "calling_ae_title": record.calling_ae_title,
        "received_at": now,
        "modality": record.modality,
        "body_part_examined": record.body_part_examined,
        "protocol_name": record.protocol_name,
        "series_description": record.series_description,
        "study_description": record.study_description,
        "anatomic_region": record.anatomic_region,
        "study_type": None,
    }


def _add_event(
    conn: Connection, study_id: int, at: datetime, name: StudyEventName, detail: str | None = None
) -> None:
    conn.execute(insert(_EVENTS).values(study_id=study_id, at=at, event=name, detail=detail))


# Statements of the ingest hot path, built once (building them per call costs more than running them).
_TOUCH_RECEIVING_STUDY = (
    update(_STUDIES)
    .where(
        _STUDIES.c.study_instance_uid == bindparam("uid"),
        _STUDIES.c.state == StudyState.RECEIVING.value,
    )
    .values(last_received_at=bindparam("now", type_=_STUDIES.c.last_received_at.type))
    .returning(_STUDIES.c.id)
)


def _on_conflict_do_nothing(dialect: str) -> Any:
    """INSERT INTO instances ... ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    else:
        raise NotImplementedError(f"database dialect {dialect} is not supported")
    return (
        dialect_insert(_INSTANCES)
        .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
        .returning(_INSTANCES.c.id)
    )


_INSERT_NEW_INSTANCE = {name: _on_conflict_do_nothing(name) for name in ("sqlite", "postgresql")}


def _insert_new_instance(conn: Connection) -> Any:
    return _INSERT_NEW_INSTANCE[conn.dialect.name]
