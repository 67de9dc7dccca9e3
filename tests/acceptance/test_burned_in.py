"""What the heatmap SCs and the summary image say in their pixels, read back with Tesseract OCR
from the files the node writes (Debian `tesseract-ocr`, installed by `scripts/setup --dev`)."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.inference.engine import ImageResult, StudyResult
from node.inference.imaging import dicom_to_unit
from node.results import drawing
from node.results.identity import AlgorithmInfo
from node.results.order import SourcePosition
from node.results.sanitise import clean_source
from node.results.sc import HeatmapCaption, annotate_heatmap, blend_heatmap, build_sc
from node.results.summary import SummaryContent, build_summary, render_summary
from tests.support.factory import dciodvfy_errors, make_radiograph
from tests.support.results import IDENTITY, SHA, TRAINED, summary_study

UNTRAINED = AlgorithmInfo("MURA DenseNet-169", "untrained-0.1.0", (), untrained=True)
CREATED = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def ocr(path: Path) -> str:
    """The text Tesseract reads from a DICOM file's pixels, white space collapsed (so that a
    wrapped line reads as one). It reads the luminance, as a gray display shows it: Tesseract
    thresholds a colour image channel by channel, and the yellow warning has no blue."""
    assert shutil.which("tesseract"), "tesseract-ocr is not installed (scripts/setup --dev)"
    png = path.with_suffix(".png")
    Image.fromarray(dcmread(path).pixel_array).convert("L").save(png)
    read = subprocess.run(["tesseract", str(png), "-"], capture_output=True, text=True)
    assert read.returncode == 0, read.stderr
    return re.sub(r"\s+", " ", read.stdout)


def write_sc(
    tmp_path: Path, raw: Dataset, caption_of: dict[str, object], cam_seed: int = 0
) -> tuple[Path, np.ndarray]:
    unit = dicom_to_unit(raw)
    caption = HeatmapCaption(position=SourcePosition.of(raw), **caption_of)  # type: ignore[arg-type]
    source, _changes = clean_source(raw)
    cam = np.random.default_rng(cam_seed).normal(size=(10, 10)).astype(np.float32)
    blended = blend_heatmap(unit, cam)
    sc = build_sc(
        source,
        annotate_heatmap(blended, caption),
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        probability=float(caption_of["probability"]),  # type: ignore[arg-type]
        algorithm_name=caption.algorithm.display_name,
        created=CREATED,
    )
    path = tmp_path / "sc.dcm"
    sc.save_as(path)
    assert dciodvfy_errors(path) == []
    return path, blended


def test_heatmap_banner_is_read_from_a_real_cr(tmp_path: Path) -> None:
    """RG3_UNCR.dcm: a 1760 x 1760 CR (series 1, instance 1, view AP), shown at 1024 x 1024."""
    raw = dcmread(get_testdata_file("RG3_UNCR.dcm"))
    caption = {"abnormal": True, "study_type": "wrist", "probability": 0.7312}
    path, _blended = write_sc(tmp_path, raw, {**caption, "algorithm": UNTRAINED})
    text = ocr(path)
    for expected in (
        "UNTRAINED MODEL - NOT FOR DIAGNOSIS",
        "Study finding: ABNORMAL (wrist study)",
        "This image: probability 0.731",
        "Source image: series 1, instance 1, view AP",
        "MURA DenseNet-169 version untrained-0.1.0",
        "NOT FOR PRIMARY DIAGNOSIS",
        "relative to this image",
    ):
        assert expected in text, (expected, text)
    assert dcmread(path).BurnedInAnnotation == "YES"


def test_heatmap_banner_is_read_from_a_small_image(tmp_path: Path) -> None:
    """A 96 x 80 radiograph: the SC is widened to 640 pixels so that the banner stays legible."""
    raw = make_radiograph(rows=96, columns=80, body_part="HAND")
    raw.SeriesNumber, raw.InstanceNumber, raw.ViewPosition = 2, 13, "PA"
    caption = {"abnormal": False, "study_type": "hand", "probability": 0.25}
    path, _blended = write_sc(tmp_path, raw, {**caption, "algorithm": TRAINED})
    assert dcmread(path).Columns == drawing.MIN_WIDTH
    text = ocr(path)
    for expected in (
        "Study finding: NORMAL (hand study)",
        "This image: probability 0.250",
        "Source image: series 2, instance 13, view PA",
        "MURA DenseNet-169 version 1",
        "NOT FOR PRIMARY DIAGNOSIS",
    ):
        assert expected in text, (expected, text)
    assert "UNTRAINED" not in text


def test_banner_and_scale_leave_the_radiograph_untouched(tmp_path: Path) -> None:
    raw = make_radiograph(rows=300, columns=700, body_part="WRIST", seed=3)
    caption = {"abnormal": True, "study_type": "wrist", "probability": 0.9}
    path, blended = write_sc(tmp_path, raw, {**caption, "algorithm": UNTRAINED})
    pixels = dcmread(path).pixel_array
    height, width = blended.shape[:2]
    assert pixels.shape[1] == width and pixels.shape[0] > height  # bands above and below
    found = [
        top
        for top in range(pixels.shape[0] - height + 1)
        if np.array_equal(pixels[top : top + height], blended)
    ]
    assert len(found) == 1 and 0 < found[0] < pixels.shape[0] - height


@pytest.mark.parametrize("untrained", [False, True])
def test_summary_image_is_read(tmp_path: Path, untrained: bool) -> None:
    sources, positions, blends = summary_study(3)
    algorithm = UNTRAINED if untrained else TRAINED
    result = StudyResult(
        "wrist",
        0.6412,
        0.5,
        True,
        tuple(ImageResult(p, np.zeros((2, 2), np.float32)) for p in (0.5, 0.6, 0.7)),
    )
    content = SummaryContent(result, algorithm, positions, blends, "mura-node 0.1.0")
    summary = build_summary(
        sources,
        render_summary(content),
        result,
        algorithm,
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        created=CREATED,
    )
    path = tmp_path / "summary.dcm"
    summary.save_as(path)
    assert dciodvfy_errors(path) == []
    text = ocr(path)
    expected = [
        "result: ABNORMAL (wrist study)",
        "Study probability 0.641, threshold 0.500",
        "Image 1: probability 0.500",
        "Image 3: probability 0.700",
        "series 1, instance 3, view AP",
        "MURA DenseNet-169 version",
        "NOT FOR PRIMARY DIAGNOSIS",
    ]
    if untrained:
        expected.append("UNTRAINED MODEL - NOT FOR DIAGNOSIS")
    else:
        expected.append(f"sha256:{SHA}")  # compared without spaces (see below)
    for item in expected:
        # Tesseract puts spaces into a long run of monospaced hexadecimal; every character is
        # read, in order.
        found = item in text or (item.startswith("sha256") and item in text.replace(" ", ""))
        assert found, (item, text)
    assert ("UNTRAINED" in text) == untrained


def test_missing_font_falls_back_to_pillows_own_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Pillow also looks for a font by its file name under the XDG data directories.
    monkeypatch.setattr(drawing, "FONT_DIR", tmp_path / "no-fonts")
    monkeypatch.setenv("XDG_DATA_DIRS", str(tmp_path / "no-fonts"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "no-fonts"))
    drawing.font.cache_clear()
    drawing._warn_missing_font.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="node.results.drawing"):
            band = drawing.text_band([drawing.Line("NOT FOR PRIMARY DIAGNOSIS")], 640)
        assert "fonts-dejavu-core" in caplog.text
        assert band.shape[1] == 640 and (band > 128).any()  # text drawn all the same
    finally:
        drawing.font.cache_clear()
        drawing._warn_missing_font.cache_clear()
