"""SR and SC writers: validated with dciodvfy and dsrdump, read back with highdicom and pydicom."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.engine import ImageResult, StudyResult
from node.imaging import dicom_to_unit
from node.results.identity import AlgorithmInfo, NodeIdentity
from node.results.order import SourcePosition
from node.results.sanitise import clean_source
from node.results.sc import (
    SC_SERIES_DESCRIPTION,
    HeatmapCaption,
    blend_heatmap,
    build_sc,
    render_heatmap,
)
from node.results.sr import SR_SERIES_DESCRIPTION, UNTRAINED_TEXT, build_sr
from tests.factory import PATIENT_ID, dciodvfy_errors, make_radiograph

IDENTITY = NodeIdentity(device_uid=generate_uid(), ae_title="MURA_NODE")


def study(n: int = 3, body: str = "WRIST") -> list:
    uid = generate_uid()
    return [clean(make_radiograph(study_uid=uid, body_part=body, seed=i)) for i in range(n)]


def clean(source: Dataset) -> Dataset:
    cleaned, changes = clean_source(source)
    assert changes == []  # the factory's images are clean
    return cleaned


def result(
    probabilities: tuple[float, ...], threshold: float = 0.5, study_type: str = "wrist"
) -> StudyResult:
    images = tuple(ImageResult(p, np.zeros((2, 2), np.float32)) for p in probabilities)
    mean = float(np.mean(probabilities))
    return StudyResult(study_type, mean, threshold, mean > threshold, images)


ALGORITHM = AlgorithmInfo(
    "MURA DenseNet-169", "1", ("mura-densenet169 1 " + "ab" * 32,), untrained=False
)


@pytest.mark.parametrize("untrained", [False, True])
def test_sr_is_valid_and_reads_back(tmp_path: Path, untrained: bool) -> None:
    sources = study()
    algorithm = AlgorithmInfo(ALGORITHM.name, ALGORITHM.version, ALGORITHM.checkpoints, untrained)
    sr = build_sr(
        sources,
        result((0.6, 0.8, 0.79)),
        algorithm,
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
    )
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    assert dciodvfy_errors(path) == []
    dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert '(263654008,SCT,"Abnormal")' in dump.stdout
    assert ("UNTRAINED" in dump.stdout) == untrained
    read = dcmread(path)
    assert read.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert read.SeriesDescription == SR_SERIES_DESCRIPTION
    assert read.PatientID == PATIENT_ID and read.StudyInstanceUID == sources[0].StudyInstanceUID
    report = hd.sr.ComprehensiveSR.from_dataset(read)
    groups = report.content.get_planar_roi_measurement_groups() + list(
        report.content.get_image_measurement_groups()
    )
    assert len(groups) == 4
    study_group = groups[0]
    assert study_group.finding_type.value == "263654008"
    assert study_group.finding_sites[0].value.value == "74670003"
    probabilities = [g.get_measurements()[0].value for g in groups]
    assert probabilities == pytest.approx([0.73, 0.6, 0.8, 0.79], abs=1e-6)
    referenced = [img.referenced_sop_instance_uid for img in study_group.source_images]
    assert referenced == [s.SOPInstanceUID for s in sources]
    assert [g.source_images[0].referenced_sop_instance_uid for g in groups[1:]] == referenced
    evidence = read.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {i.ReferencedSOPInstanceUID for s in evidence for i in s.ReferencedSOPSequence} == set(
        referenced
    )
    assert (UNTRAINED_TEXT[:20] in dump.stdout) == untrained


def test_normal_finding_and_predecessor(tmp_path: Path) -> None:
    sources = study(1, body="HAND")
    first = build_sr(
        sources,
        result((0.2,), study_type="hand"),
        ALGORITHM,
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
    )
    second = build_sr(
        sources,
        result((0.3,), study_type="hand"),
        ALGORITHM,
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        predecessor=first,
    )
    path = tmp_path / "second.dcm"
    second.save_as(path)
    assert dciodvfy_errors(path) == []
    read = dcmread(path)
    predecessor = (
        read.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    )
    assert predecessor.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert (
        '(17621005,SCT,"Normal")'
        in subprocess.run(["dsrdump", str(path)], capture_output=True, text=True).stdout
    )


def test_heatmap_rendering_keeps_the_radiograph() -> None:
    unit = np.tile(np.linspace(0, 1, 300, dtype=np.float32), (200, 1))
    cam = np.zeros((10, 10), np.float32)
    cam[4:6, 4:6] = 5.0
    rgb = blend_heatmap(unit, cam, max_side=150)
    assert rgb.shape == (100, 150, 3) and rgb.dtype == np.uint8  # aspect ratio kept
    corner = rgb[:5, :5].astype(int)
    assert (corner[..., 0] == corner[..., 1]).all() and (
        corner[..., 1] == corner[..., 2]
    ).all()  # no colour without evidence
    centre = rgb[45:55, 70:80].astype(int)
    assert (np.abs(centre[..., 0] - centre[..., 2]) > 20).any()  # colour where the evidence is
    # At most 45 % opacity: the underlying gray level still shows through.
    assert centre.mean() > 0.3 * 255 * 0.5


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", None])
def test_sc_is_valid_and_references_its_source(tmp_path: Path, name: str | None) -> None:
    source = (
        dcmread(get_testdata_file(name))
        if name
        else make_radiograph(rows=120, columns=80, study_description="XR WRIST 2 VIEWS")
    )
    unit = dicom_to_unit(source)
    caption = HeatmapCaption(True, "wrist", 0.42, ALGORITHM, SourcePosition.of(source))
    source, _changes = clean_source(source)
    cam = np.random.default_rng(0).normal(size=(10, 10)).astype(np.float32)
    rgb = render_heatmap(unit, cam, caption)
    assert max(blend_heatmap(unit, cam).shape[:2]) <= 1024
    created = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    sc = build_sc(
        source,
        rgb,
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        probability=0.42,
        algorithm_name="MURA DenseNet-169",
        created=created,
    )
    path = tmp_path / "sc.dcm"
    sc.save_as(path)
    assert dciodvfy_errors(path) == []
    read = dcmread(path)
    assert read.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert read.SeriesDescription == SC_SERIES_DESCRIPTION
    assert (
        read.BurnedInAnnotation == "YES"
        and "not for primary diagnosis" in read.DerivationDescription
    )
    assert read.StudyDescription == source.StudyDescription  # copied from the cleaned source
    local = created.astimezone()
    assert (read.SeriesDate, read.SeriesTime) == (
        local.strftime("%Y%m%d"),
        local.strftime("%H%M%S"),
    )
    assert read.StudyInstanceUID == source.StudyInstanceUID and read.PatientID == source.PatientID
    reference = read.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert read.pixel_array.shape == rgb.shape
