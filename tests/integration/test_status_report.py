"""`status` names studies by UID tails that `studies show` resolves; first arrival and
re-opening apart; the untrained model said first; `db upgrade` says what it did."""

from __future__ import annotations

import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from node.clock import ELLIPSIS, unique_tails
from node.db import Study, _alembic_config, head_revision, make_engine, upgrade_database
from node.operate.reports import AmbiguousStudy, StudyDetail, as_json
from node.operate.status import collect_status, study_history
from node.operate.status_view import render_status
from node.states import StudyState

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)

# A DICOM UID (PS3.5 9.1): components of digits without leading zeros, joined by dots, at most
# 64 characters; the first component 0, 1 or 2.
component = st.integers(min_value=0, max_value=10**12).map(str)
uids = st.builds(
    lambda root, rest: ".".join([root, *rest]),
    st.sampled_from(["1", "2", "1.2.840", "1.3.6.1.4.1", "2.25"]),
    st.lists(component, min_size=1, max_size=6),
).filter(lambda uid: len(uid) <= 64)


def add_studies(engine: Engine, study_uids: list[str], generation: int = 1, start: int = 0) -> None:
    """DONE studies first received at T0, (re-)opened a minute apart from ``start`` minutes."""
    with Session(engine) as session, session.begin():
        for index, uid in enumerate(study_uids, start):
            at = T0 + timedelta(minutes=index)
            session.add(
                Study(
                    study_instance_uid=uid,
                    state=StudyState.DONE,
                    generation=generation,
                    first_received_at=T0,
                    opened_at=at,
                    last_received_at=at,
                    state_changed_at=at,
                )
            )


@settings(max_examples=300)
@given(st.sets(uids, min_size=1, max_size=30), st.sets(uids, max_size=10))
def test_tails_are_unique_substrings_that_name_one_uid(shown: set[str], others: set[str]) -> None:
    tails = unique_tails(shown, others)
    assert len(set(tails.values())) == len(shown)
    for uid, tail in tails.items():
        assert uid.endswith(tail)
        rivals = (shown | others) - {uid}
        if tail != uid:
            assert not any(r.endswith(tail) or r.startswith(tail) for r in rivals)


def test_the_two_studies_of_the_report_are_told_apart(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    upgrade_database(engine)
    first, second = "1.3.6.1.4.1.2.9.20260105.5457", "1.3.6.1.4.1.2.11.20260105.5457"
    add_studies(engine, [first, second])
    names = {s.study_instance_uid: s.study for s in collect_status(engine, T0).recent_studies}
    assert names == {first: f"{ELLIPSIS}9.20260105.5457", second: f"{ELLIPSIS}1.20260105.5457"}
    for uid, name in names.items():
        for fragment in (name, name.removeprefix(ELLIPSIS)):
            detail = study_history(engine, fragment)
            assert isinstance(detail, StudyDetail) and detail.study_instance_uid == uid
    assert study_history(engine, "5457") == AmbiguousStudy((first, second))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sets(uids, min_size=1, max_size=12), st.integers(min_value=1, max_value=12))
def test_every_shown_name_finds_its_study_in_the_whole_database(
    study_uids: set[str], limit: int
) -> None:
    """Studies beyond ``limit`` are not shown but must not be confused with shown ones."""
    with tempfile.TemporaryDirectory() as directory:
        engine = make_engine(f"sqlite:///{Path(directory) / 'q.db'}")
        upgrade_database(engine)
        add_studies(engine, sorted(study_uids))
        report = collect_status(engine, T0, limit=limit)
        names = [s.study for s in report.recent_studies]
        assert len(set(names)) == len(names) == min(limit, len(study_uids))
        for row in report.recent_studies:
            fragment = row.study.removeprefix(ELLIPSIS)
            assert fragment in row.study_instance_uid
            for asked in (row.study, fragment):
                detail = study_history(engine, asked)
                assert isinstance(detail, StudyDetail)
                assert detail.study_instance_uid == row.study_instance_uid
        engine.dispose()


def test_first_arrival_and_reopening_are_shown_apart(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    upgrade_database(engine)
    add_studies(engine, ["1.2.3.4.5.6.7"])
    add_studies(engine, ["1.2.3.4.5.6.8"], generation=2, start=90)
    report = collect_status(engine, T0)
    rows = {s.study_instance_uid: as_json(s) for s in report.recent_studies}
    once, again = rows["1.2.3.4.5.6.7"], rows["1.2.3.4.5.6.8"]
    assert (once["first_received_at"], once["reopened_at"]) == ("2026-01-05T08:00:00+00:00", None)
    assert (again["first_received_at"], again["reopened_at"]) == (
        "2026-01-05T08:00:00+00:00",
        "2026-01-05T09:30:00+00:00",
    )
    text = render_status(report, "test")
    assert "FIRST ARRIVAL (UTC)" in text and "REOPENED" in text
    [line] = [line for line in text.splitlines() if line.startswith(again["study"])]
    # first arrival, then the re-opening (that day, so its time only), then the latest arrival
    assert re.search(r"DONE +2026-01-05 08:00:00 +09:30:00 +09:30:00", line), line
    assert "MODEL UNTRAINED" not in text and as_json(report)["model_untrained"] is False


def test_an_untrained_model_is_said_first(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    upgrade_database(engine)
    report = collect_status(engine, T0, model_untrained=True)
    assert list(as_json(report))[:2] == ["generated_at", "model_untrained"]
    assert as_json(report)["model_untrained"] is True
    assert render_status(report, "test").splitlines()[1].startswith("MODEL UNTRAINED: ")


def test_schema_upgrade_says_what_it_did(database_url: str) -> None:
    engine = make_engine(database_url)
    head = head_revision()
    created = upgrade_database(engine)
    assert created.describe() == f"created the database schema at revision {head}"
    assert upgrade_database(engine).describe() == (
        f"the database schema is already at revision {head}"
    )
    command.downgrade(_alembic_config(engine), "0004")
    assert upgrade_database(engine).describe() == (
        f"upgraded the database schema from revision 0004 to {head}"
    )
    engine.dispose()
