"""Coded anatomy end to end: dcmtk's storescu sends studies whose only anatomy is their
AnatomicRegionSequence to a node (SQLite and PostgreSQL), the completion tick decides them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db import Instance, Study
from node.operate.service import Node
from node.operate.status import study_history
from node.operate.status_view import render_history
from tests.support.factory import make_radiograph, storescu, write
from tests.support.nodes import FakeClock


def coded_image(study_uid: str, seed: int, item: Dataset | None, **kwargs: object) -> Dataset:
    ds = make_radiograph(study_uid=study_uid, seed=seed, rows=16, columns=16, **kwargs)  # type: ignore[arg-type]
    if item is not None:
        ds.AnatomicRegionSequence = [item]
    return ds


def code(scheme: str | None, value: str | None, meaning: str = "") -> Dataset:
    item = Dataset()
    if value is not None:
        item.CodeValue = value
    if scheme is not None:
        item.CodingSchemeDesignator = scheme
    if meaning:
        item.CodeMeaning = meaning
    return item


def send_and_complete(
    node: Node, clock: FakeClock, images: list[Dataset], directory: Path
) -> tuple[Study, list[Instance]]:
    directory.mkdir()
    files = [write(ds, directory / f"img{i}.dcm") for i, ds in enumerate(images)]
    result = storescu(node.scp.port, files)
    assert result.returncode == 0, result.stderr
    clock.advance(3600)
    node.scheduler.tick()
    with Session(node.engine) as session:
        study = session.scalars(select(Study)).one()
        rows = list(session.scalars(select(Instance).order_by(Instance.id)))
        session.expunge_all()
    assert len(rows) == len(images)
    return study, rows


@pytest.mark.parametrize(
    ("scheme", "value", "meaning", "state", "study_type", "reason"),
    [
        ("SCT", "14975008", "Forearm", "READY", "forearm", "forearm: 2 of 2 images"),
        ("SRT", "T-D8500", "Forearm", "READY", "forearm", "forearm: 2 of 2 images"),
        (
            "SCT",
            "816094009",
            "Chest",
            "IGNORED",
            None,
            "not an upper-extremity study (AnatomicRegionSequence SCT 816094009 'Chest')",
        ),
    ],
)
def test_a_study_identified_only_by_its_code(
    make_node: Callable[..., Node],
    tmp_path: Path,
    database_url: str,
    scheme: str,
    value: str,
    meaning: str,
    state: str,
    study_type: str | None,
    reason: str,
) -> None:
    clock = FakeClock()
    node = make_node(clock=clock, database={"url": database_url})
    study_uid = generate_uid()
    # no BodyPartExamined, no descriptions: the code is all the study says about itself
    images = [
        coded_image(study_uid, i, code(scheme, value, meaning), body_part=None) for i in (0, 1)
    ]
    study, rows = send_and_complete(node, clock, images, tmp_path / "study")
    assert (study.state, study.study_type, study.reason) == (state, study_type, reason)
    # two rows: the first through the new-study path, the second through the fast path
    assert [row.anatomic_region for row in rows] == [f"{scheme}:{value}"] * 2
    assert [row.body_part_examined for row in rows] == [None, None]
    assert [row.study_type for row in rows] == [study_type] * 2
    history = study_history(node.engine, study_uid)
    assert history is not None
    assert [i.anatomic_region for i in history.instances] == [f"{scheme}:{value}"] * 2
    assert f"{scheme}:{value}" in render_history(history)


def test_unusable_codes_are_stored_as_none_and_the_text_decides(
    make_node: Callable[..., Node], tmp_path: Path, database_url: str
) -> None:
    clock = FakeClock()
    node = make_node(clock=clock, database={"url": database_url})
    study_uid = generate_uid()
    not_a_sequence = coded_image(study_uid, 0, None, body_part="WRIST")
    not_a_sequence.add_new(0x00082218, "LO", "FOREARM")
    overlong = code("SCT", None)
    overlong.LongCodeValue = "1" * 80
    images = [
        coded_image(study_uid, 1, code(None, "14975008", "Forearm"), body_part="WRIST"),
        coded_image(study_uid, 2, code("SCT", ""), body_part="WRIST"),
        coded_image(study_uid, 3, overlong, body_part="WRIST"),
        not_a_sequence,
        coded_image(study_uid, 4, code("SCT", "53120007", "Upper limb"), body_part="WRIST"),
    ]
    study, rows = send_and_complete(node, clock, images, tmp_path / "study")
    assert sorted(str(row.anatomic_region) for row in rows) == ["None"] * 4 + ["SCT:53120007"]
    assert (study.state, study.study_type, study.reason) == (
        "READY",
        "wrist",
        "wrist: 5 of 5 images",
    )
