"""Presentation states of the AI region (node/results/gsps.py): dciodvfy, and dcmtk's dcmp2pgm
applying them to the source image."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.results.gsps import GSPS_SERIES_DESCRIPTION, build_gsps, label
from node.results.identity import NodeIdentity
from node.results.region import Region, cam_region
from node.results.sanitise import clean_source
from tests.support.factory import dciodvfy_errors, make_radiograph, raw, write

IDENTITY = NodeIdentity(device_uid=generate_uid(), ae_title="MURA_NODE")


def test_region_is_the_peak_and_the_strong_cells_that_touch_it() -> None:
    cam = np.zeros((10, 10), np.float32)
    cam[6, 3], cam[6, 4], cam[5, 3] = 5.0, 3.0, 2.6  # the peak and two cells above half of it
    cam[0, 0] = 4.0  # strong, but apart from the peak
    cam[7, 3] = 2.4  # touching, but below half of the peak
    assert cam_region(cam, 1760, 1000) == Region(300.0, 880.0, 500.0, 1232.0, localised=True)
    assert not cam_region(np.full((10, 10), -1.0, np.float32), 100, 100).localised


def build(source_raw: Dataset, cam: np.ndarray, path: Path) -> Dataset | None:
    source, _changes = clean_source(source_raw)
    gsps = build_gsps(
        source_raw,
        source,
        cam,
        label(True, "wrist", 0.7312, untrained=True),
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    if gsps is None:
        return None
    gsps.save_as(path)
    assert dciodvfy_errors(path) == []
    return dcmread(path)


def pgm(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.float64)


def test_dcmp2pgm_applies_the_presentation_state_to_a_real_cr(tmp_path: Path) -> None:
    """RG3_UNCR.dcm (MONOCHROME1, a window of its own): dcmtk reads the label and the region, and
    the radiograph under them looks as the image's own default presentation shows it."""
    image = get_testdata_file("RG3_UNCR.dcm")
    cam = np.zeros((10, 10), np.float32)
    cam[6, 3] = 1.0
    read = build(dcmread(image), cam, tmp_path / "gsps.dcm")
    assert read is not None
    assert read.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"
    assert read.SeriesDescription == GSPS_SERIES_DESCRIPTION
    assert read.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == (
        dcmread(image, stop_before_pixels=True).SOPInstanceUID
    )
    applied = subprocess.run(
        ["dcmp2pgm", "-v", "-p", str(tmp_path / "gsps.dcm"), image, str(tmp_path / "with.pgm")],
        capture_output=True,
        text=True,
    )
    assert applied.returncode == 0, applied.stderr
    dump = applied.stdout + applied.stderr
    assert "Presentation Label: AI_REGION" in dump
    assert "window center=550 width=1024" in dump  # the image's own window
    assert re.search(
        r'text 1: "UNTRAINED MODEL - AI: ABNORMAL wrist study, this image 0\.731', dump
    )
    # Cell (6, 3) of the 10 x 10 map: columns 528 to 704, rows 1056 to 1232.
    assert "coordinates: 528\\1056, 704\\1056, 704\\1232, 528\\1232, 528\\1056" in dump
    plain = subprocess.run(
        ["dcmp2pgm", image, str(tmp_path / "plain.pgm")], capture_output=True, text=True
    )
    assert plain.returncode == 0, plain.stderr
    with_state, without = pgm(tmp_path / "with.pgm"), pgm(tmp_path / "plain.pgm")
    assert with_state.shape == without.shape == (1760, 1760)
    # MONOCHROME1 under an INVERSE presentation LUT: bone white, as without the state.
    assert np.corrcoef(with_state.ravel(), without.ravel())[0, 1] > 0.99


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's about the invalid values
def test_invalid_display_values_are_left_out(tmp_path: Path) -> None:
    source = make_radiograph(body_part="WRIST", rows=40, columns=30)
    raw(source, "WindowCenter", b"high")
    raw(source, "RescaleSlope", b"0,5")
    raw(source, "RescaleIntercept", b"0")
    source = dcmread(write(source, tmp_path / "source.dcm"), stop_before_pixels=True)
    read = build(source, np.ones((10, 10), np.float32), tmp_path / "gsps.dcm")
    assert read is not None
    assert "SoftcopyVOILUTSequence" not in read and "RescaleSlope" not in read
    assert read.PresentationLUTShape == "IDENTITY"


def test_colour_images_get_no_presentation_state(tmp_path: Path) -> None:
    source = make_radiograph(body_part="WRIST")
    source.SamplesPerPixel = 3
    assert build(source, np.ones((10, 10), np.float32), tmp_path / "gsps.dcm") is None
