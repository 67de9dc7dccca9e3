"""SR and SC writers: validated with dciodvfy, dsrdump and pixelmed's DicomSRValidator, rendered
with dsr2html, read back with highdicom and pydicom, and checked against what OHIF 3 reads."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from node.inference.imaging import dicom_to_unit
from node.results.identity import AlgorithmInfo
from node.results.order import SourcePosition
from node.results.region import cam_region
from node.results.sanitise import clean_source
from node.results.sc import (
    SC_SERIES_DESCRIPTION,
    HeatmapCaption,
    blend_heatmap,
    build_sc,
    render_heatmap,
)
from node.results.sr import UNTRAINED_TEXT, Summary, build_sr, read_summary, series_description
from tests.support.factory import (
    PATIENT_ID,
    dciodvfy_errors,
    make_radiograph,
    sr_validator_findings,
)
from tests.support.results import ALGORITHM, IDENTITY, result


def study(n: int = 3, body: str = "WRIST", rows: int = 32, columns: int = 32) -> list:
    uid = generate_uid()
    return [
        clean(make_radiograph(study_uid=uid, body_part=body, seed=i, rows=rows, columns=columns))
        for i in range(n)
    ]


def clean(source: Dataset) -> Dataset:
    cleaned, changes = clean_source(source)
    assert changes == []  # the factory's images are clean
    return cleaned


def blob(top: int, left: int) -> np.ndarray:
    """A 10 x 10 map, negative but for a 2 x 3 blob at (top, left) that peaks in its middle."""
    cam = np.full((10, 10), -1.0, np.float32)
    cam[top : top + 2, left : left + 3] = 2.0
    cam[top + 1, left + 1] = 3.0
    return cam


# One localised map, one flat, one negative (both give the whole image).
CAMS = (blob(2, 5), np.zeros((10, 10), np.float32), np.full((10, 10), -0.5, np.float32))


def write_sr(directory: Path, untrained: bool, sources: list[Dataset] | None = None) -> Path:
    """The SR of a three-image wrist study (probabilities 0.6, 0.8, 0.79; maps `CAMS`)."""
    algorithm = AlgorithmInfo(ALGORITHM.name, ALGORITHM.version, ALGORITHM.checkpoints, untrained)
    sr = build_sr(
        sources or study(rows=40, columns=32),
        result((0.6, 0.8, 0.79), cams=CAMS),
        algorithm,
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
    )
    path = directory / "sr.dcm"
    sr.save_as(path)
    return path


def code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def containers(item: Dataset) -> list[Dataset]:
    found = [item] if item.get("ValueType", "CONTAINER") == "CONTAINER" else []
    for child in item.get("ContentSequence", []):
        found += containers(child)
    return found


def ohif_problems(sr: Dataset) -> list[str]:
    """What OHIF 3.13's cornerstone-dicom-sr extension stumbles on in a TID 1500 SR, by the rules
    of its source (getSopClassHandlerModule.ts, isRehydratable.ts and @cornerstonejs/adapters'
    MeasurementReport, as bundled in @ohif/app 3.13.2; see docs/results.md):

    - it reads every Measurement Group in Imaging Measurements as a measurement, merging groups
      that share a Tracking Unique Identifier; a merged measurement without a SCOORD crashes
      `_checkIfCanAddMeasurementsToDisplaySet` (coords[0] is undefined), one whose SCOORD has no
      SELECTED FROM image is never drawn, one without a Tracking Identifier crashes the parser;
    - its labels are the NUMs ("Probability: 0.61 1") and the finding site;
    - hydration (the measurement panel) takes a group's region from its first NUM when it has
      one, so a group with a region and a NUM is not hydrated; only a 5-point POLYLINE Image
      Region (the RectangleROI adapter) or a POINT hydrates without a Cornerstone tracking
      identifier."""
    problems = []
    if code(sr) != "126000":
        problems.append("not an Imaging Measurement Report: OHIF shows nothing of it")
    measurements = [item for item in sr.ContentSequence if code(item) == "126010"]
    groups = [g for m in measurements for g in m.ContentSequence if code(g) == "125007"]
    if not groups:
        problems.append("no measurement group")
    merged: dict[str, list[Dataset]] = {}
    for group in groups:
        items = list(group.ContentSequence)
        uids = [item.UID for item in items if code(item) == "112040"]
        if not uids or not any(code(item) == "112039" for item in items):
            problems.append("a group without tracking identifier or UID")
            continue
        merged.setdefault(uids[0], []).extend(items)
        regions = [item for item in items if item.ValueType == "SCOORD"]
        if regions and any(item.ValueType == "NUM" for item in items):
            problems.append(f"{uids[0]}: region and NUM in one group: not hydrated")
        for region in regions:
            if (code(region), region.GraphicType, len(region.GraphicData)) != (
                "111030",
                "POLYLINE",
                10,
            ):
                problems.append(f"{uids[0]}: the region is no 5-point Image Region POLYLINE")
    for uid, items in merged.items():
        regions = [item for item in items if item.ValueType == "SCOORD"]
        if not regions:
            problems.append(f"{uid}: no SCOORD: OHIF crashes reading ReferencedSOPSequence")
        elif "ReferencedSOPSequence" not in regions[0].ContentSequence[0]:
            problems.append(f"{uid}: the region names no image")
        if not any(item.ValueType == "NUM" and code(item) == "122157" for item in items):
            problems.append(f"{uid}: no Probability NUM to label the region with")
    return problems


def dsr2html_text(path: Path) -> str:
    """What dcmtk's dsr2html renders, as text: tags dropped, white space collapsed."""
    html = subprocess.run(["dsr2html", str(path)], capture_output=True, text=True, check=True)
    return " ".join(re.sub(r"<[^>]*>", " ", html.stdout).split())


@pytest.mark.parametrize("untrained", [False, True])
def test_sr_is_valid_and_reads_back(tmp_path: Path, untrained: bool) -> None:
    sources = study(rows=40, columns=32)
    path = write_sr(tmp_path, untrained, sources)
    assert dciodvfy_errors(path) == []
    dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert '(263654008,SCT,"Abnormal")' in dump.stdout
    assert ("UNTRAINED" in dump.stdout) == untrained
    read = dcmread(path)
    assert read.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert read.SeriesDescription == series_description(result((0.6, 0.8, 0.79)), untrained)
    assert read.SeriesDescription.startswith("UNTRAINED ") == untrained
    assert "ABNORMAL, probability 0.73" in read.SeriesDescription
    assert read.PatientID == PATIENT_ID and read.StudyInstanceUID == sources[0].StudyInstanceUID
    assert {c.ContinuityOfContent for c in containers(read)} == {"SEPARATE"}
    report = hd.sr.ComprehensiveSR.from_dataset(read)
    regions = report.content.get_planar_roi_measurement_groups()
    probabilities = report.content.get_image_measurement_groups()
    assert len(regions) == len(probabilities) == 3
    referenced = [s.SOPInstanceUID for s in sources]
    algorithm_name = "MURA DenseNet-169" + (" (UNTRAINED)" if untrained else "")
    for index, (region, probability) in enumerate(zip(regions, probabilities, strict=True)):
        assert region.tracking_identifier == probability.tracking_identifier == f"Image {index + 1}"
        assert region.tracking_uid == probability.tracking_uid
        assert region.finding_type.value == "263654008"
        assert region.finding_sites[0].value.value == "74670003"
        roi = region.roi
        assert roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        expected = cam_region(CAMS[index], rows=40, columns=32).polyline()
        assert np.allclose(roi.value, expected, atol=1e-4)
        assert roi.ContentSequence[0].referenced_sop_instance_uid == referenced[index]
        assert probability.source_images[0].referenced_sop_instance_uid == referenced[index]
        for group in (region, probability):
            names = hd.sr.utils.find_content_items(group[0], name=codes.DCM.AlgorithmName)
            assert [item.value for item in names] == [algorithm_name]
    # Image 1's blob (rows 2-3, columns 5-7 of 10 x 10) over 32 columns x 40 rows; the flat and
    # the negative map localise nothing: the whole image.
    assert np.allclose(regions[0].roi.value[[0, 2]], [[16.0, 8.0], [25.6, 16.0]], atol=1e-4)
    assert np.allclose(regions[1].roi.value[[0, 2]], [[0.0, 0.0], [32.0, 40.0]])
    values = [group.get_measurements()[0].value for group in probabilities]
    assert values == pytest.approx([0.6, 0.8, 0.79], abs=1e-6)
    units = {group.get_measurements()[0].unit.value for group in probabilities}
    assert units == {"1"}
    (evaluations,) = [item for item in read.ContentSequence if code(item) == "C0034375"]
    study_items = {code(item): item for item in evaluations.ContentSequence}
    assert study_items["121071"].ConceptCodeSequence[0].CodeValue == "263654008"
    assert float(study_items["122157"].TextValue) == pytest.approx(0.73, abs=1e-6)
    assert ("121106" in study_items) == untrained
    if untrained:
        assert study_items["121106"].TextValue == UNTRAINED_TEXT
    evidence = read.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {i.ReferencedSOPInstanceUID for s in evidence for i in s.ReferencedSOPSequence} == set(
        referenced
    )
    assert read_summary(read) == Summary(
        "Abnormal", pytest.approx(0.73, abs=1e-6), "Wrist joint structure", (0.6, 0.8, 0.79)
    )
    assert ohif_problems(read) == []


def test_sr_passes_the_sr_validator_and_renders_with_labels(tmp_path: Path) -> None:
    """pixelmed's DicomSRValidator checks TID 1500 and its templates (an item where the template
    has no row for it is a warning); dsr2html labels every item of a SEPARATE container."""
    path = write_sr(tmp_path, untrained=True)
    assert sr_validator_findings(path) == []
    text = dsr2html_text(path)
    assert "Qualitative Evaluations Finding: Abnormal" in text
    assert "Probability: 0.73 Comment: UNTRAINED MODEL" in text  # the study's
    for value in ("0.6", "0.8", "0.79"):  # each image's
        assert f"Probability: {value} 1" in text
    assert text.count("Image Region: Polyline") == 3


def test_ohif_rules_catch_a_group_without_region() -> None:
    """The check above fails on the SR the node wrote before: a study group and image groups
    with a probability and no region."""
    source = study(1)[0]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Study"),
        finding_type=hd.sr.CodedConcept("263654008", "SCT", "Abnormal"),
        measurements=[
            hd.sr.Measurement(
                name=hd.sr.CodedConcept("122157", "DCM", "Probability"),
                value=0.7,
                unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
            )
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=IDENTITY.device_uid
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure"),
        imaging_measurements=[group],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=990,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    problems = ohif_problems(sr)
    assert len(problems) == 1 and "no SCOORD" in problems[0]


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
        result((0.3,), study_type="hand", cams=(blob(0, 0),)),
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
    assert read.SeriesDescription == "AI RESULT: NORMAL, probability 0.30 (mura-node)"
    assert (
        '(17621005,SCT,"Normal")'
        in subprocess.run(["dsrdump", str(path)], capture_output=True, text=True).stdout
    )
    report = hd.sr.ComprehensiveSR.from_dataset(read)
    (region,) = report.content.get_planar_roi_measurement_groups()
    assert region.finding_type.value == "17621005"
    assert region.finding_sites[0].value.value == "85562004"
    # The blob's cells (rows 0-1, columns 0-2 of 10 x 10) over the 32 x 32 image.
    assert np.allclose(region.roi.value[[0, 2]], [[0.0, 0.0], [9.6, 6.4]], atol=1e-4)
    assert ohif_problems(read) == []


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
