"""Cross-study batching: one forward pass over several claimed studies, each study's outcome its own.

Real SCP (storescu on loopback), real queue (SQLite and PostgreSQL), the untrained engine; every
result object of the study that succeeds is checked with dciodvfy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from node.config import ModelConfig
from node.db import Result, Study, StudyEvent
from node.inference.engine import InferenceEngine
from node.operate.service import Node
from node.states import StudyState
from node.work.result_set import ResultSetWriter
from node.work.worker import build_worker
from tests.support.factory import dciodvfy_errors, make_radiograph, storescu, write, write_study
from tests.support.nodes import FakeClock


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return InferenceEngine.from_config(ModelConfig(allow_untrained=True, batch_size=8))


def study_row(node: Node, uid: str) -> Study:
    with Session(node.engine) as session:
        return session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()


def send(node: Node, files: Sequence[Path]) -> str:
    assert storescu(node.scp.port, list(files)).returncode == 0
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_a_failing_study_in_a_batch_never_touches_the_others(
    make_node: Callable[..., Node],
    engine: InferenceEngine,
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    node = make_node(clock=clock, database={"url": database_url})
    short = make_radiograph(body_part="WRIST", rows=48, columns=48)
    short.PixelData = short.PixelData[:50]  # stored as received; decoding finds it short
    undecodable = send(node, [write(short, tmp_path / "short.dcm")])
    writer_raises = send(node, write_study(tmp_path / "raises", 1, body_part="WRIST", rows=48))
    claim_lost = send(node, write_study(tmp_path / "lost", 1, body_part="WRIST", rows=48))
    mixed_uid = generate_uid()
    mixed = [make_radiograph(study_uid=mixed_uid, body_part="WRIST", seed=i) for i in (0, 1)]
    mixed[1].PatientID = "SOMEONE-ELSE"
    send(node, [write(ds, tmp_path / f"mixed{i}.dcm") for i, ds in enumerate(mixed)])
    good = send(node, write_study(tmp_path / "good", 2, body_part="WRIST", rows=48))
    clock.advance(3600)
    node.scheduler.tick()

    passes: list[list[str | None]] = []
    predict_studies = engine.predict_studies

    def counting(studies: Sequence[tuple[str | None, Any]]) -> Any:
        passes.append([study_type for study_type, _ in studies])
        return predict_studies(studies)

    monkeypatch.setattr(engine, "predict_studies", counting)
    write_results = ResultSetWriter.write

    def faulty(self: ResultSetWriter, evidence: Any, *args: Any) -> Any:
        uid = str(evidence.sources[0].StudyInstanceUID)
        if uid == writer_raises:
            raise RuntimeError("the writer broke")
        if uid == claim_lost:  # a late image re-opened the study while it was processed
            with Session(node.engine) as session, session.begin():
                session.execute(
                    update(Study)
                    .where(Study.study_instance_uid == uid)
                    .values(state=StudyState.RECEIVING, generation=Study.generation + 1)
                )
        return write_results(self, evidence, *args)

    monkeypatch.setattr(ResultSetWriter, "write", faulty)
    worker = build_worker(node.config, engine, clock)
    try:
        assert worker.run_once()  # seven images: every study fits one batch of 8
        worker.drain()
        assert not worker.run_once()
    finally:
        worker.close()

    assert len(passes) == 1 and len(passes[0]) == 4  # all but the undecodable study
    failed = study_row(node, undecodable)
    assert failed.state == "FAILED" and failed.reason.startswith(
        "input fault: image 1 of 1 cannot be used"
    )
    broken = study_row(node, writer_raises)
    assert broken.state == "FAILED"
    assert broken.reason.startswith("node fault: RuntimeError: the writer broke")
    assert study_row(node, claim_lost).state == "RECEIVING"
    mixing = study_row(node, mixed_uid)
    assert mixing.state == "FAILED" and "different patients" in mixing.reason
    done = study_row(node, good)
    assert done.state == "DONE" and done.reason.startswith(("normal:", "abnormal:"))
    with Session(node.engine) as session:
        rows = list(session.scalars(select(Result).order_by(Result.id)))
        claims = session.execute(
            select(Study.study_instance_uid, StudyEvent.event).join(StudyEvent)
        ).all()
    assert {r.study_id for r in rows} == {done.id}  # nothing recorded for the others
    assert sorted(r.kind for r in rows) == ["sc", "sc", "sr", "summary"]
    for row in rows:
        assert dciodvfy_errors(node.store.path_of(row.file_path)) == []
    # Each study was claimed on its own claim, once.
    claimed = [uid for uid, event in claims if event == "claimed"]
    assert sorted(claimed) == sorted([undecodable, writer_raises, claim_lost, mixed_uid, good])
    files = [p for p in node.store.results.rglob("*.dcm") if p.is_file()]
    assert len(files) == 4  # the failed studies' files were removed


def test_a_batch_stops_claiming_once_its_images_fill_the_engines_batch(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    clock = FakeClock()
    node = make_node(clock=clock)
    uids = [
        send(node, write_study(tmp_path / f"s{i}", 3, body_part="HAND", rows=32, columns=32))
        for i in range(3)
    ]
    clock.advance(3600)
    node.scheduler.tick()
    engine = InferenceEngine.from_config(ModelConfig(allow_untrained=True, batch_size=4))
    worker = build_worker(node.config, engine, clock)
    try:
        assert worker.run_once()  # 3 images < 4: a second study is claimed; 6 >= 4: no third
        worker.drain()
        assert [study_row(node, uid).state for uid in uids] == ["DONE", "DONE", "READY"]
        assert worker.run_once()
        worker.drain()
        assert study_row(node, uids[2]).state == "DONE"
    finally:
        worker.close()
