"""The study's summary image (node/results/summary.py): its header and its layout; what its pixels
say is read back with OCR in tests/acceptance/test_burned_in.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from node.inference.engine import ImageResult, StudyResult
from node.results.order import SourcePosition
from node.results.summary import (
    SUMMARY_SERIES_DESCRIPTION,
    SummaryContent,
    build_summary,
    render_summary,
)
from tests.support.factory import dciodvfy_errors
from tests.support.results import IDENTITY, TRAINED, summary_study


def result(count: int) -> StudyResult:
    images = tuple(ImageResult(0.2, np.zeros((2, 2), np.float32)) for _ in range(count))
    return StudyResult("wrist", 0.2, 0.5, False, images)


@pytest.mark.parametrize("laterality", ["L", "mixed"])
def test_summary_header(tmp_path: Path, laterality: str) -> None:
    sources, positions, blends = summary_study(2)
    sources[0].ImageLaterality = "L"
    sources[1].ImageLaterality = "L" if laterality == "L" else "R"
    created = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    content = SummaryContent(result(2), TRAINED, positions, blends, "mura-node 0.1.0")
    summary = build_summary(
        sources,
        render_summary(content),
        result(2),
        TRAINED,
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        created=created,
    )
    path = tmp_path / "summary.dcm"
    summary.save_as(path)
    assert dciodvfy_errors(path) == []
    read = dcmread(path)
    assert read.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (read.SeriesNumber, read.SeriesDescription) == (992, SUMMARY_SERIES_DESCRIPTION)
    assert list(read.ImageType) == ["DERIVED", "SECONDARY"] and read.BurnedInAnnotation == "YES"
    assert "study normal, probability 0.200, threshold 0.500" in read.DerivationDescription
    assert [i.ReferencedSOPInstanceUID for i in read.SourceImageSequence] == [
        s.SOPInstanceUID for s in sources
    ]
    assert read.StudyInstanceUID == sources[0].StudyInstanceUID
    assert read.StudyDescription == "XR WRIST 3 VIEWS"
    local = created.astimezone()
    assert read.SeriesDate == local.strftime("%Y%m%d")
    assert read.SeriesTime == local.strftime("%H%M%S")
    assert read.Laterality == ("L" if laterality == "L" else "")
    assert read.Columns == 1024 and read.SamplesPerPixel == 3


@pytest.mark.parametrize("count", [1, 2, 4, 7])
def test_summary_page_stays_near_the_viewport_shape(count: int) -> None:
    _sources, positions, blends = summary_study(count)
    page = render_summary(
        SummaryContent(result(count), TRAINED, positions, blends, "mura-node 0.1.0")
    )
    assert page.shape[1] == 1024 and page.shape[0] <= 2 * 1024


def test_summary_needs_one_thumbnail_per_image() -> None:
    _sources, positions, blends = summary_study(2)
    with pytest.raises(ValueError, match="one thumbnail"):
        render_summary(
            SummaryContent(
                result(3), TRAINED, [*positions, SourcePosition(None, None, None)], blends, "x"
            )
        )
