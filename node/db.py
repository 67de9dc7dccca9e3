"""Database: SQLAlchemy 2 models, engines for SQLite and PostgreSQL, and Alembic-managed schema.

SQLite (the default, one file in the data directory) runs in WAL mode with ``synchronous=FULL``
so that a committed row survives a power cut, and every write transaction starts with
``BEGIN IMMEDIATE`` so concurrent writers queue on the lock instead of failing half-way.
PostgreSQL is chosen by URL and lets several machines share one queue.

The schema is created and upgraded only by the Alembic migrations in ``node/migrations``;
``serve`` upgrades on start, ``status`` refuses a database it cannot read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    false,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from node.errors import DatabaseUnavailable, SchemaError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    study_type: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state_changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    held_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # How many times a worker died on the study (lease ran out, process died); never reset.
    crashes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(8))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    file_path: Mapped[str | None] = mapped_column(String(160))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    protocol_name: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    study_description: Mapped[str | None] = mapped_column(String(64))
    study_type: Mapped[str | None] = mapped_column(String(16))
    anatomic_region: Mapped[str | None] = mapped_column(String(64))


class StudyEvent(Base):
    """A study's history: arrivals that re-open it, decisions, claims, results, deliveries."""

    __tablename__ = "study_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    event: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)


class Association(Base):
    """An association that delivered instances of a study, from a calling AE title configured for
    release-triggered completion (``completion.release_trigger_aes``), and how it ended.

    One row per association and study, written before the study's first instance from that
    association is recorded; ``ending`` is an `AssociationEnding` (NULL while open). The rows of a
    study are removed when it completes, and those of studies past RECEIVING when the association
    ends, so the table holds only what a completion decision still needs."""

    __tablename__ = "associations"
    __table_args__ = (UniqueConstraint("association_uid", "study_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    association_uid: Mapped[str] = mapped_column(String(32))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ending: Mapped[str | None] = mapped_column(String(16))


class Result(Base):
    """An object the node wrote for a study (SR or SC); filled by the results writers."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    file_path: Mapped[str] = mapped_column(String(160))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Dispatch(Base):
    """Delivery of one result to one destination; filled by the dispatcher."""

    __tablename__ = "dispatches"
    __table_args__ = (UniqueConstraint("result_id", "destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    unanswered: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IngestRejection(Base):
    """A C-STORE the node refused, for `status` (no patient data: status, reason, peer)."""

    __tablename__ = "ingest_rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    status: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def database_error_reason(exc: SQLAlchemyError) -> str:
    """The first line of the driver's message (``exc.orig``), else of SQLAlchemy's: one line
    for an operator, without the SQL statement and parameters SQLAlchemy appends."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL, full sync, a busy timeout and immediate writes."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(url, pool_pre_ping=True)
        except ImportError as exc:
            raise DatabaseUnavailable(
                f"no driver for {parsed.drivername} ({exc.name} is not installed); "
                "for PostgreSQL install mura-node[postgresql]"
            ) from None
    database = parsed.database
    if database and database != ":memory:" and not readonly:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below rule
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        if not readonly:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


def _alembic_config(engine: Engine | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@dataclass(frozen=True)
class SchemaUpgrade:
    """What :func:`upgrade_database` did: the Alembic revision before (None: no schema) and
    after (this version's head)."""

    before: str | None
    after: str

    def describe(self) -> str:
        """One line for an operator: "created the database schema at revision X", "upgraded
        the database schema from revision X to Y" or "the database schema is already at
        revision X"."""
        if self.before is None:
            return f"created the database schema at revision {self.after}"
        if self.before != self.after:
            return f"upgraded the database schema from revision {self.before} to {self.after}"
        return f"the database schema is already at revision {self.after}"


def upgrade_database(engine: Engine) -> SchemaUpgrade:
    """Create or upgrade the schema to the newest migration (keeps every existing row); returns
    the revisions before and after. Raises SQLAlchemyError when the database refuses."""
    before = current_revision(engine)
    command.upgrade(_alembic_config(engine), "head")
    after = current_revision(engine)
    assert after is not None  # the upgrade to head has just committed a revision
    return SchemaUpgrade(before, after)


def check_schema(engine: Engine) -> None:
    """Raise SchemaError unless the database exists and is at this version's schema."""
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        raise SchemaError(
            f"cannot open database: {exc.__class__.__name__}: {exc.args[0]}"
        ) from None
    if revision is None:
        raise SchemaError("the database has no mura-node schema yet (start `mura-node serve` once)")
    head = head_revision()
    if revision != head:
        raise SchemaError(
            f"the database schema is at revision {revision}, this version expects {head}; "
            "run `mura-node db upgrade` (or start `mura-node serve`)"
        )
