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


def test_crash_counter_migration_counts_the_reclaims_so_far(database_url: str) -> None:
    """Revision 0004 fills studies.crashes from the "reclaimed" events a study already has."""
    from alembic import command

    from node.db import _alembic_config

    engine = make_engine(database_url)
    command.upgrade(_alembic_config(engine), "0003")
    with engine.begin() as connection:
        for study_id, uid in ((1, "1.2.3"), (2, "4.5.6")):
            connection.execute(
                text(
                    "INSERT INTO studies (id, study_instance_uid, state, generation,"
                    " first_received_at, opened_at, last_received_at, state_changed_at)"
                    " VALUES (:id, :uid, 'READY', 2, :t, :t, :t, :t)"
                ),
                {"id": study_id, "uid": uid, "t": "2026-03-01 08:00:00"},
            )
        for event in ("claimed", "reclaimed", "reopened", "claimed", "reclaimed"):
            connection.execute(
                text(
                    "INSERT INTO study_events (study_id, at, event)"
                    " VALUES (1, '2026-03-01 08:00:00', :event)"
                ),
                {"event": event},
            )
    upgrade_database(engine)
    with engine.connect() as connection:
        crashes = dict(connection.execute(text("SELECT id, crashes FROM studies")).all())
    assert crashes == {1: 2, 2: 0}
    engine.dispose()
