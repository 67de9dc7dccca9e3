"""Fixtures and hooks shared by every tier; helpers that tests import live in tests/support.

Each test is marked with its tier, the folder it lives in (``unit``, ``integration`` or
``acceptance``), so ``pytest -m unit`` selects a tier as ``pytest tests/unit`` does.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from node.clock import Clock, utcnow
from node.operate.service import Node
from node.profiles import StorageProfile, Vocabulary, load_storage_profile, load_vocabulary
from tests.support.nodes import node_config

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
TIERS = ("unit", "integration", "acceptance")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier: the first folder under tests/ that holds it."""
    for item in items:
        folder = item.path.resolve().relative_to(TESTS).parts[0]
        if folder in TIERS:
            item.add_marker(folder)


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
