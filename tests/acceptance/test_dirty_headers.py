"""Headers from the field never cost the result: storescu -> node -> worker -> a real Orthanc.

One class of dirty header per test, each on an otherwise clean image: the study must end DONE, its
SR and heatmap must reach Orthanc and pass dciodvfy, the attribute must be copied, normalised, left
empty or left out as docs/results.md says, and the study's history must name the attribute but not
its value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.config import Destination, ModelConfig
from node.db import IngestRejection, Study, StudyEvent
from node.deliver.dispatch import Dispatcher
from node.inference.engine import InferenceEngine
from node.operate.service import Node
from node.work.worker import build_worker
from tests.support.factory import dciodvfy_errors, make_radiograph, raw, storescu, write
from tests.support.nodes import FakeClock
from tests.support.orthanc import Orthanc
from tests.support.pipeline import Pipeline

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
# The same name in ISO 2022 IR 87 (JIS X 0208) with escape sequences, as a Japanese modality sends it.
JAPANESE_NAME_ISO2022 = (
    b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"
)


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return InferenceEngine.from_config(ModelConfig(allow_untrained=True))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc"))
    pacs.start()
    yield pacs
    pacs.stop()


@pytest.fixture
def pipeline(
    make_node: Callable[..., Node], engine: InferenceEngine, orthanc: Orthanc
) -> Iterator[Pipeline]:
    clock = FakeClock()
    node = make_node(clock=clock)
    destination = Destination(
        name="pacs", ae_title=orthanc.ae_title, host="127.0.0.1", port=orthanc.dicom_port
    )
    config = replace(node.config, destinations=(destination,))
    worker, dispatcher = build_worker(config, engine, clock), Dispatcher(config, clock)
    yield Pipeline(node, worker, dispatcher, clock)
    worker.close()
    dispatcher.close()


def deliver(pipeline: Pipeline, orthanc: Orthanc, source: Dataset, tmp_path: Path) -> list[Path]:
    """Send one image, process its study, deliver the results; their copies at Orthanc."""
    path = write(source, tmp_path / "source.dcm")
    sent = storescu(pipeline.node.scp.port, [path])
    assert sent.returncode == 0, sent.stderr
    pipeline.complete()
    assert pipeline.process()
    study = pipeline.study(str(source.StudyInstanceUID))
    assert study.state == "DISPATCHING", study.reason
    pipeline.dispatcher.run_once()
    study = pipeline.study(str(source.StudyInstanceUID))
    assert study.state == "DONE", [d.last_error for d in pipeline.dispatches()]
    copies = []
    for index, instance in enumerate(orthanc.get("/instances")):
        data = orthanc.file(instance)
        copy = tmp_path / f"orthanc-{index}.dcm"
        copy.write_bytes(data)
        if dcmread(copy, stop_before_pixels=True).StudyInstanceUID == source.StudyInstanceUID:
            copies.append(copy)
    assert len(copies) == 3  # the SR, the heatmap, the summary image
    for copy in copies:
        assert dciodvfy_errors(copy) == [], copy
    # The SR, then the heatmap (series 991), then the summary (series 992).
    return sorted(copies, key=lambda p: int(dcmread(p, stop_before_pixels=True).SeriesNumber))


def content_items(ds: Dataset) -> list[tuple[str, str | None]]:
    """Every SR content item in the tree: (concept name code, coded value or None)."""
    items = []
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeValue
        value = item.ConceptCodeSequence[0].CodeValue if "ConceptCodeSequence" in item else None
        items.append((str(name), value))
        items.extend(content_items(item))
    return items


def history(pipeline: Pipeline, study_uid: str) -> list[str]:
    study = pipeline.study(study_uid)
    with Session(pipeline.node.engine) as session:
        events = session.scalars(select(StudyEvent).where(StudyEvent.study_id == study.id))
        return [f"{e.event}: {e.detail}" for e in events]


def cleaned(pipeline: Pipeline, study_uid: str) -> str:
    lines = [line for line in history(pipeline, study_uid) if line.startswith("headers cleaned")]
    assert len(lines) == 1, history(pipeline, study_uid)
    return lines[0]


def test_iso_2022_character_set_with_empty_first_value(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    source = make_radiograph(body_part="WRIST")
    raw(source, "SpecificCharacterSet", b"\\ISO 2022 IR 87")
    raw(source, "PatientName", JAPANESE_NAME_ISO2022)
    copies = deliver(pipeline, orthanc, source, tmp_path)
    for copy in copies:
        result = dcmread(copy)
        assert str(result.PatientName) == JAPANESE_NAME
        assert result.SpecificCharacterSet == "ISO_IR 192"
    at_orthanc = [
        tags for tags in orthanc.instances() if tags["StudyInstanceUID"] == source.StudyInstanceUID
    ]
    assert [tags["PatientName"] for tags in at_orthanc] == [JAPANESE_NAME] * 3


def test_unreadable_birth_date_is_left_empty(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    source = raw(make_radiograph(body_part="WRIST"), "PatientBirthDate", b"00/00/0000")
    for copy in deliver(pipeline, orthanc, source, tmp_path):
        result = dcmread(copy)
        assert "PatientBirthDate" in result and result.PatientBirthDate == ""
        assert result.PatientID == source.PatientID
    line = cleaned(pipeline, str(source.StudyInstanceUID))
    assert "PatientBirthDate left empty" in line and "00/00/0000" not in line


def test_patient_sex_outside_m_f_o_is_left_empty(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    source = raw(make_radiograph(body_part="WRIST"), "PatientSex", b"U")
    for copy in deliver(pipeline, orthanc, source, tmp_path):
        assert dcmread(copy).PatientSex == ""
    assert "PatientSex left empty" in cleaned(pipeline, str(source.StudyInstanceUID))


def test_decimal_comma_spacing_is_left_out_of_the_image_library(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    source = raw(make_radiograph(body_part="WRIST"), "ImagerPixelSpacing", b"0,143\\0,143")
    sr, _sc, _summary = deliver(pipeline, orthanc, source, tmp_path)
    names = [name for name, _value in content_items(dcmread(sr))]
    assert "110910" in names  # (110910, DCM, "Pixel Data Rows"): the image is in the library
    assert "111026" not in names  # (111026, DCM, "Horizontal Pixel Spacing") is left out
    line = cleaned(pipeline, str(source.StudyInstanceUID))
    assert "ImagerPixelSpacing left out" in line and "0,143" not in line


def test_acr_nema_study_time_is_normalised(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    source = raw(make_radiograph(body_part="WRIST"), "StudyTime", b"09:15:00")
    for copy in deliver(pipeline, orthanc, source, tmp_path):
        assert dcmread(copy).StudyTime == "091500"
    assert "StudyTime normalised" in cleaned(pipeline, str(source.StudyInstanceUID))


def test_missing_modality_comes_from_the_sop_class(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    source = make_radiograph(body_part="WRIST")
    del source.Modality
    sr, _sc, _summary = deliver(pipeline, orthanc, source, tmp_path)
    assert ("121139", "CR") in content_items(dcmread(sr))  # (121139, DCM, "Modality") CR
    assert "Modality derived" in cleaned(pipeline, str(source.StudyInstanceUID))


def test_invalid_study_description_is_left_out_and_a_valid_one_copied(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    source = raw(
        make_radiograph(body_part="WRIST"), "StudyDescription", b"XR WRIST\x07" + b"x" * 70
    )
    for copy in deliver(pipeline, orthanc, source, tmp_path):
        assert "StudyDescription" not in dcmread(copy)
    assert "StudyDescription left out" in cleaned(pipeline, str(source.StudyInstanceUID))


def test_clean_headers_leave_no_history_of_changes(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    source = make_radiograph(body_part="WRIST", study_description="XR WRIST 1 VIEW")
    for copy in deliver(pipeline, orthanc, source, tmp_path):
        result = dcmread(copy)
        assert (result.PatientBirthDate, result.PatientSex, result.StudyTime) == (
            source.PatientBirthDate,
            source.PatientSex,
            source.StudyTime,
        )
        assert result.StudyDescription == "XR WRIST 1 VIEW"
    assert not any(
        line.startswith("headers cleaned")
        for line in history(pipeline, str(source.StudyInstanceUID))
    )


def test_long_latin_1_name_is_kept_whole_in_its_character_set(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    name = "Müller-Lüdenscheidt-Größenwahn-Schönefeld^Hans-Jürgen Björn"  # 66 bytes in UTF-8
    source = make_radiograph(body_part="WRIST")
    raw(source, "SpecificCharacterSet", b"ISO_IR 100")
    raw(source, "PatientName", name.encode("latin-1"))
    for copy in deliver(pipeline, orthanc, source, tmp_path):
        result = dcmread(copy)
        assert (str(result.PatientName), result.SpecificCharacterSet) == (name, "ISO_IR 100")


def test_a_study_mixing_patients_fails_as_an_input_fault(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    first = make_radiograph(body_part="WRIST")
    second = make_radiograph(body_part="WRIST", study_uid=str(first.StudyInstanceUID), seed=1)
    second.PatientID, second.PatientName = "PID-OTHER", "Other^Patient"
    paths = [write(first, tmp_path / "a.dcm"), write(second, tmp_path / "b.dcm")]
    assert storescu(pipeline.node.scp.port, paths).returncode == 0
    pipeline.complete()
    assert pipeline.process()
    study = pipeline.study(str(first.StudyInstanceUID))
    assert study.state == "FAILED"
    assert study.reason.startswith("input fault: the study's images name 2 different patients")
    assert "PID-OTHER" not in study.reason and pipeline.results(str(first.StudyInstanceUID)) == []


def test_an_image_without_series_instance_uid_is_refused_at_ingest(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    source = make_radiograph(body_part="WRIST")
    del source.SeriesInstanceUID
    sent = storescu(pipeline.node.scp.port, [write(source, tmp_path / "no-series.dcm")])
    assert sent.returncode != 0  # storescu saw a failure status
    with Session(pipeline.node.engine) as session:
        refused = session.scalars(select(IngestRejection)).all()
        studies = session.scalars(select(Study)).all()
    assert [(r.status, r.reason) for r in refused] == [(0xC001, "series_instance_uid is missing")]
    assert studies == []
