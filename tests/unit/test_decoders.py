"""Decoding at the size used (node/inference/decoders.py) on pydicom-data's files and on
generated JPEG and JPEG 2000 images; GPU decoding's fall-backs to the CPU."""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import pixel_array

import node.inference.decoders as decoders
from node.inference.decoders import DecodeSize, decode_first_frame, j2k_geometry, reduction_level
from node.inference.imaging import dicom_to_unit
from tests.support.compressed import as_jpeg2000, as_jpeg_baseline, smooth_radiograph


def data(name: str) -> Dataset:
    return dcmread(Path(get_testdata_file(name)))


def block_mean(full: np.ndarray, level: int, shape: tuple[int, ...]) -> np.ndarray:
    """The full image averaged over 2**level x 2**level blocks, cut to ``shape``'s whole blocks."""
    k = 2**level
    rows, columns = (full.shape[0] // k) * k, (full.shape[1] // k) * k
    mean = full[:rows, :columns].astype(np.float64).reshape(rows // k, k, columns // k, k)
    return mean.mean(axis=(1, 3))[: shape[0], : shape[1]]


@pytest.mark.parametrize(
    ("rows", "columns", "size", "most", "level"),
    [
        (1760, 1760, DecodeSize(320), 5, 2),  # 440 x 440: one more would give 220
        (1760, 1760, DecodeSize(320, 1024), 5, 0),  # 880 would be short of the display's 1024
        (2200, 1800, DecodeSize(320, 1024), 5, 1),  # 1100 x 900
        (4096, 4096, DecodeSize(320), 3, 3),  # JPEG: at most 1/8
        (4096, 4096, DecodeSize(320), 1, 1),  # a codestream with one decomposition level
        (1024, 256, DecodeSize(320), 5, 0),  # the short side is already under 320
        (300, 300, DecodeSize(320, 1024), 5, 0),  # small images stay as they are
        (641, 641, DecodeSize(320), 5, 1),  # ceil(641 / 2) = 321
    ],
)
def test_the_level_is_the_smallest_size_that_still_serves_model_and_display(
    rows: int, columns: int, size: DecodeSize, most: int, level: int
) -> None:
    assert reduction_level(rows, columns, size, most) == level


def test_jpeg2000_main_header_gives_origin_and_decomposition_levels() -> None:
    ds = data("RG3_J2KR.dcm")
    assert j2k_geometry(get_frame(ds.PixelData, 0, number_of_frames=1)) == ((0, 0), 5)
    assert j2k_geometry(b"\xff\xd8\xff\xe0") is None  # a JPEG, not a codestream
    assert j2k_geometry(b"\xff\x4f\xff\x51\x00") is None  # cut short


@pytest.mark.parametrize("name", ["RG3_J2KR.dcm", "RG3_J2KI.dcm"])
def test_a_jpeg2000_cr_decodes_at_a_quarter_of_each_side_with_the_same_values(name: str) -> None:
    ds = data(name)
    reduced = decode_first_frame(ds, DecodeSize(320))
    full = pixel_array(ds, index=0)
    assert reduced.shape == (440, 440)
    assert reduced.dtype == full.dtype
    # OpenJPEG's low-pass image is the block average up to the wavelet's filter shape
    difference = reduced - block_mean(full, 2, reduced.shape)
    assert abs(difference.mean()) < 1.0  # of 1023 stored values
    assert np.median(np.abs(difference)) < 4.0


def test_signed_jpeg2000_keeps_its_sign_at_reduced_size() -> None:
    ds = data("JPEG2000.dcm")  # 1024 x 256, 16 bits signed
    full = pixel_array(ds, index=0)
    reduced = decode_first_frame(ds, DecodeSize(128))
    assert reduced.shape == (512, 128) and reduced.dtype == np.int16
    assert reduced.min() < 0
    assert abs((reduced - block_mean(full, 1, reduced.shape)).mean()) < 1.0


@pytest.mark.parametrize("bits", [12, 16])
def test_generated_jpeg2000_of_any_depth_decodes_reduced(bits: int) -> None:
    ds = as_jpeg2000(smooth_radiograph(700, 900, bits, seed=1))
    full = pixel_array(ds, index=0)
    reduced = decode_first_frame(ds, DecodeSize(320))
    assert reduced.shape == (350, 450)
    difference = reduced - block_mean(full, 1, reduced.shape)
    assert np.median(np.abs(difference)) < 2 ** (bits - 8)  # under 1/256 of the range


def test_jpeg_baseline_decodes_with_dct_scaling() -> None:
    ds = as_jpeg_baseline(smooth_radiograph(1400, 1300, 8, seed=2))
    full = pixel_array(ds, index=0)
    reduced = decode_first_frame(ds, DecodeSize(320))
    assert reduced.shape == (350, 325)  # 1/4: 1/8 would leave 163 columns
    assert np.median(np.abs(reduced - block_mean(full, 2, reduced.shape))) < 2.0


def test_other_images_decode_in_full() -> None:
    for name in (
        "RG3_UNCR.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "MR_small_RLE.dcm",
        "JPEGLSNearLossless_16.dcm",
    ):
        ds = data(name)
        decoded = decode_first_frame(ds, DecodeSize(8))
        assert decoded.shape[:2] == (ds.Rows, ds.Columns), name
        assert np.array_equal(decoded, pixel_array(ds, index=0)), name
    ds = data("RG3_J2KR.dcm")
    in_full = decode_first_frame(ds, DecodeSize(320, reduce=False))
    assert np.array_equal(in_full, pixel_array(ds, index=0))


def test_a_level_the_decoder_refuses_is_tried_smaller_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = data("RG1_J2KR.dcm")  # 1955 x 1841: OpenJPEG refuses its level 2, takes level 1
    with caplog.at_level(logging.DEBUG):
        reduced = decode_first_frame(ds, DecodeSize(320))
    assert reduced.shape == (978, 921)
    assert "reduced decoding at level 2 declined" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_monochrome1_and_the_window_apply_the_same_at_reduced_size() -> None:
    ds = data("RG3_J2KR.dcm")  # MONOCHROME1 with a window
    full, reduced = dicom_to_unit(ds), dicom_to_unit(ds, size=DecodeSize(320))
    assert reduced.shape == (440, 440)
    assert abs(float((reduced - block_mean(full, 2, reduced.shape)).mean())) < 0.002
    generated = as_jpeg2000(smooth_radiograph(1400, 1100, 12, seed=3))  # percentile window
    full, reduced = dicom_to_unit(generated), dicom_to_unit(generated, size=DecodeSize(320))
    assert reduced.shape == (700, 550)
    assert np.median(np.abs(reduced - block_mean(full, 1, reduced.shape))) < 0.01


# GPU decoding: what happens without nvImageCodec, without a device, and when it refuses.


@pytest.fixture
def fresh_gpu() -> Iterator[None]:
    decoders.gpu_decoder.cache_clear()
    yield
    decoders.gpu_decoder.cache_clear()


def test_without_nvimgcodec_cuda_decoding_takes_the_cpu_path(
    fresh_gpu: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # import fails
    monkeypatch.setitem(sys.modules, "nvidia", None)
    ds = data("RG3_J2KR.dcm")
    with caplog.at_level(logging.DEBUG, logger="node.inference.decoders"):
        on_cuda = decode_first_frame(ds, DecodeSize(320, device="cuda"))
    assert np.array_equal(on_cuda, decode_first_frame(ds, DecodeSize(320)))
    assert "GPU decoding unavailable" in caplog.text


def test_with_nvimgcodec_but_no_device_cuda_decoding_takes_the_cpu_path(fresh_gpu: None) -> None:
    # the dev set-up installs nvImageCodec alone (pyproject.toml), so this never skips for it
    import nvidia.nvimgcodec  # noqa: F401
    import torch

    if torch.cuda.is_available():  # then bench/gpu_decode.sh checks GPU decoding on the device
        pytest.skip("a CUDA device is present: scripts/gpu_decode.sh checks GPU decoding")
    assert decoders.gpu_decoder() is None
    ds = data("RG3_J2KR.dcm")
    on_auto = decode_first_frame(ds, DecodeSize(320, 1024, device="auto"))
    assert np.array_equal(on_auto, pixel_array(ds, index=0))


class FakeDecoder:
    """Stands in for nvImageCodec's decoder: decodes on the CPU, or refuses (returns None)."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.calls = 0

    def decode(self, src: bytes, params: object) -> object:
        self.calls += 1
        if self.refuse:
            return None
        import io

        from PIL import Image

        array = np.asarray(Image.open(io.BytesIO(src), formats=("JPEG2000", "JPEG")))
        return types.SimpleNamespace(cpu=lambda: array[:, :, None])


def fake_nvimgcodec(monkeypatch: pytest.MonkeyPatch, decoder: FakeDecoder) -> None:
    module = types.SimpleNamespace(
        DecodeParams=lambda **_: None, ColorSpec=types.SimpleNamespace(UNCHANGED=0)
    )
    monkeypatch.setitem(sys.modules, "nvidia", types.SimpleNamespace(nvimgcodec=module))
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", module)
    monkeypatch.setattr(decoders, "gpu_decoder", lambda: decoder)


def test_gpu_decoding_goes_through_pydicom_and_gives_the_full_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoder = FakeDecoder(refuse=False)
    fake_nvimgcodec(monkeypatch, decoder)
    ds = as_jpeg_baseline(smooth_radiograph(700, 900, 8, seed=4))
    decoded = decode_first_frame(ds, DecodeSize(320, device="cuda"))
    assert decoder.calls == 1
    assert decoded.shape == (700, 900) and decoded.dtype == np.uint8
    assert np.array_equal(decoded, pixel_array(ds, index=0, decoding_plugin="pillow"))


def test_an_image_the_gpu_refuses_is_decoded_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    decoder = FakeDecoder(refuse=True)
    fake_nvimgcodec(monkeypatch, decoder)
    ds = data("RG3_J2KR.dcm")
    with caplog.at_level(logging.DEBUG):
        decoded = decode_first_frame(ds, DecodeSize(320, device="cuda"))
    assert decoder.calls == 1
    assert decoded.shape == (440, 440)  # the CPU's reduced decoding
    assert "GPU decoding declined the image" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_pydicom_tries_these_plugins_on_its_own_only_to_be_declined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoder = FakeDecoder(refuse=False)
    fake_nvimgcodec(monkeypatch, decoder)
    ds = data("RG3_J2KR.dcm")
    for label in (decoders.REDUCED, decoders.GPU):
        with pytest.raises(RuntimeError, match="not asked for"):
            pixel_array(ds, index=0, decoding_plugin=label)
    assert decoder.calls == 0
