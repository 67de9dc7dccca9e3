from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from node.clock import Clock, utcnow
from node.config import (
    CompletionConfig,
    Config,
    DatabaseConfig,
    DicomConfig,
    ServiceConfig,
    StorageConfig,
    WorkerConfig,
)
from node.profiles import StorageProfile, Vocabulary, load_storage_profile, load_vocabulary
from node.service import Node
from tests.factory import free_port

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def vocabulary() -> Vocabulary:
    return load_vocabulary()


@pytest.fixture(scope="session")
def profile() -> StorageProfile:
    return load_storage_profile()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards.

    The server comes from MURA_TEST_POSTGRES_URL (scripts/test starts the local one). A missing
    server fails the test: PostgreSQL support is part of the product, not optional."""
    base = make_url(os.environ.get("MURA_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    base = base.set(drivername="postgresql+psycopg")
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"mura_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {base} is not reachable: {exc.orig}; set MURA_TEST_POSTGRES_URL"
        )
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    return str(request.getfixturevalue("postgres_url"))


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


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    started: list[Node] = []

    def factory(clock: Clock = utcnow, **sections: Any) -> Node:
        node = Node(node_config(tmp_path, **sections), clock=clock)
        node.start(children=False)
        started.append(node)
        return node

    yield factory
    for node in started:
        node.stop()


class FakeClock:
    """A clock that moves only when a test says so."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
