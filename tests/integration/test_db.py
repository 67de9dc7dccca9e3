from pathlib import Path

import pytest
from sqlalchemy import text

from node.db import check_schema, current_revision, head_revision, make_engine, upgrade_database
from node.errors import SchemaError


def test_schema_is_created_by_migrations_and_checked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    engine = make_engine(url)
    with pytest.raises(SchemaError, match="no mura-node schema yet"):
        check_schema(engine)
    upgrade_database(engine)
    assert current_revision(engine) == head_revision()
    check_schema(make_engine(url, readonly=True))
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    with pytest.raises(SchemaError, match="run `mura-node db upgrade`"):
        check_schema(engine)


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_migrations_give_exactly_the_models_schema(database_url: str) -> None:
    """Every column the models declare is created by a migration, and nothing else is."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from node.db import Base

    engine = make_engine(database_url)
    upgrade_database(engine)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()
