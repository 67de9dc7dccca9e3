"""The model on reduced decoding against the model on full decoding (node/inference/decoders.py).

pydicom-data's JPEG 2000 CRs (1760 x 1760 and 1955 x 1841, lossless and lossy) and generated
radiographs (2200 x 1800: JPEG 2000 lossless and 20:1, JPEG baseline) go through the untrained
DenseNet-169 of tests/support/compressed.py decoded in full and decoded as the worker decodes
them, with and without a display image.

Tolerances: measured on this machine (bench/decode.py prints the same figures), the largest
probability difference was 2.9e-3 (a 20:1 JPEG 2000 image decoded at 1/4 of each side, where
the percentile window sees the low-pass image), the others 0 to 3.2e-4; the lowest CAM
correlation 0.9964. ``PROBABILITY_TOLERANCE`` (0.005) is under half of the issue's 0.01 and a
little under twice the largest measured difference, which is of the size of what bf16 autocast
already changes on CUDA (2.6e-3, docs/performance.md); decoding is deterministic, so a run
elsewhere with the same OpenJPEG and libjpeg-turbo gives the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydicom.data import get_testdata_file

from node.inference.preprocessing import DicomPreprocessor
from tests.support.compressed import (
    as_jpeg2000,
    as_jpeg_baseline,
    parity,
    parity_engine,
    smooth_radiograph,
)
from tests.support.factory import write

PROBABILITY_TOLERANCE = 0.005
CAM_CORRELATION = 0.99
CRS = ["RG3_J2KR.dcm", "RG3_J2KI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("compressed")
    generated = [
        write(as_jpeg2000(smooth_radiograph(2200, 1800, 12, 0)), folder / "j2k_lossless.dcm"),
        write(
            as_jpeg2000(smooth_radiograph(2200, 1800, 12, 1), lossless=False),
            folder / "j2k_20to1.dcm",
        ),
        write(as_jpeg_baseline(smooth_radiograph(2200, 1800, 8, 2)), folder / "jpeg.dcm"),
    ]
    return [Path(get_testdata_file(name)) for name in CRS] + generated


def test_probabilities_and_cams_agree_with_full_decoding(corpus: list[Path]) -> None:
    found = parity(corpus, parity_engine(), (1024, 0))
    report = "\n".join(
        f"display {side}: {p.name}: {p.full_shape} -> {p.reduced_shape}, "
        f"|dp| {p.probability_difference:.2e}, CAM r {p.cam_correlation:.5f}"
        for side, results in found.items()
        for p in results
    )
    for side, least in ((1024, 3), (0, 7)):  # the reduction did happen
        assert sum(p.reduced_shape != p.full_shape for p in found[side]) >= least, report
    for p in found[1024] + found[0]:
        assert p.probability_difference <= PROBABILITY_TOLERANCE, report
        assert p.cam_correlation >= CAM_CORRELATION, report
        assert p.display_difference < 0.01, report  # mean, of display values in [0, 1]


def test_the_preprocessor_reduces_but_keeps_the_display_size(corpus: list[Path]) -> None:
    jpeg = [p for p in corpus if p.name == "jpeg.dcm"]
    [(tensor, display)] = DicomPreprocessor(reduced=True).map_with_display(jpeg)  # type: ignore[misc]
    [(full_tensor, full_display)] = DicomPreprocessor(reduced=False).map_with_display(jpeg)  # type: ignore[misc]
    assert tensor.shape == full_tensor.shape == (3, 320, 320)
    assert display.shape == full_display.shape == (1024, 838)
    assert float((tensor - full_tensor).abs().mean()) < 0.02  # normalised input units
    assert not torch.equal(tensor, full_tensor)  # it was decoded reduced


def test_gpu_decoding_agrees_with_cpu_decoding(corpus: list[Path]) -> None:
    """On a machine with nvImageCodec and a CUDA device (bench/gpu_decode.sh runs it there):
    the same figures with GPU decoding in place of reduced decoding."""
    from node.inference.decoders import gpu_decoder

    if gpu_decoder() is None:
        pytest.skip("no GPU decoding here: nvImageCodec or a CUDA device is missing")
    found = parity(corpus, parity_engine(), (1024,), device="cuda")[1024]
    report = "\n".join(
        f"{p.name}: {p.full_shape} -> {p.reduced_shape}, |dp| {p.probability_difference:.2e}, "
        f"CAM r {p.cam_correlation:.5f}"
        for p in found
    )
    print(report)
    for p in found:
        assert p.probability_difference <= PROBABILITY_TOLERANCE, report
        assert p.cam_correlation >= CAM_CORRELATION, report
