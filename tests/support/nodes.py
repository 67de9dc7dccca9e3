"""A node under test: its configuration and a clock that moves only when the test says so."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from node.config import (
    CompletionConfig,
    Config,
    DatabaseConfig,
    DicomConfig,
    ServiceConfig,
    StorageConfig,
    WorkerConfig,
)
from node.db import Study, StudyEvent
from tests.support.factory import free_port


def node_config(tmp_path: Path, **sections: Any) -> Config:
    """A test configuration: loopback, a free port, a data directory under tmp_path, and
    completion timers long enough that nothing completes unless a test asks for it."""
    config = Config(
        dicom=DicomConfig(host="127.0.0.1", port=free_port()),
        storage=StorageConfig(data_dir=tmp_path / "data"),
        database=DatabaseConfig(),
        completion=CompletionConfig(
            quiet_period_s=3600, force_complete_s=7200, tick_interval_s=3600
        ),
        service=ServiceConfig(grace_period_s=5),
        worker=WorkerConfig(processes=0),
    )
    for name, values in sections.items():
        config = replace(config, **{name: replace(getattr(config, name), **values)})
    return config


class FakeClock:
    """A clock that moves only when a test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def study_events(engine: Engine, uid: str) -> list[tuple[str, str | None]]:
    """A study's history in the database: (event, detail), oldest first."""
    with Session(engine) as session:
        return [
            (row.event, row.detail)
            for row in session.execute(
                select(StudyEvent.event, StudyEvent.detail)
                .join(Study, Study.id == StudyEvent.study_id)
                .where(Study.study_instance_uid == uid)
                .order_by(StudyEvent.id)
            )
        ]
