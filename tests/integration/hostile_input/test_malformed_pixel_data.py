"""The battery, part two: pixel data that is short, long, lying about its transfer syntax,
corrupt, zero-sized, a decompression bomb, or breaks the grayscale pipeline; then the
decoding path on its own, which refuses absurd images before decoding them."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from node.errors import UndecodableImage
from node.inference.engine import InferenceEngine
from node.inference.preprocessing import DicomPreprocessor
from node.operate.service import Node
from node.work.worker import build_worker
from tests.support.factory import storescu, write
from tests.support.hostile import (
    Case,
    broken_items,
    broken_voi_lut,
    compressed,
    failed,
    j2k_declaring,
    jpeg_declaring,
    jpeg_lossless,
    long_pixels,
    radiograph,
    raw_bytes_claiming_jpeg2000,
    rle_bomb,
    short_pixels,
    with_frame,
    with_values,
)
from tests.support.hostile_node import (
    FAILED_PREFIX,
    PeakMemory,
    Running,
    check_case,
    instance,
    study,
)
from tests.support.nodes import FakeClock

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

CASES = [
    # pixel data shorter or longer than rows x columns x bits
    failed("pixel-data-short", short_pixels, "less than expected"),
    Case("pixel-data-long", long_pixels, 0x0000, outcome="DONE"),  # the excess is ignored
    failed(
        "bits-allocated-larger-than-data",
        lambda: with_values(BitsAllocated=32),
        "less than expected",
    ),
    failed("bits-allocated-12", lambda: with_values(BitsAllocated=12), "'Bits Allocated' value"),
    # unsupported or lying transfer syntax
    failed("raw-bytes-claiming-jpeg2000", raw_bytes_claiming_jpeg2000, "cannot decode pixel data"),
    # corrupt compressed frames
    failed(
        "jpeg2000-codestream-cut-in-half",
        lambda: with_frame(JPEG2000Lossless, lambda f: f[: len(f) // 2]),
        "cannot decode pixel data",
    ),
    failed(
        "rle-header-with-9-segments",
        lambda: with_frame(RLELossless, lambda f: struct.pack("<L", 9) + f[4:]),
        "cannot decode pixel data",
    ),
    failed("encapsulation-items-broken", broken_items, "cannot decode pixel data"),
    # zero-sized and absurdly large images (decompression bombs)
    failed(
        "zero-rows-and-columns",
        lambda: with_values(Rows=0, Columns=0, PixelData=b""),
        "image has 0 rows and 0 columns",
    ),
    failed(
        "65535-squared-times-1000-frames",
        lambda: with_values(Rows=65535, Columns=65535, NumberOfFrames=b"1000"),
        "image of 65535 x 65535 x 1000 pixels exceeds",
    ),
    failed(
        "jpeg2000-declaring-60000-squared",
        lambda: with_frame(JPEG2000Lossless, j2k_declaring(60000)),
        "compressed frame declares 60000 x 60000 pixels",
    ),
    failed(
        "jpeg-ls-declaring-65535-squared",
        lambda: with_frame(JPEGLSLossless, jpeg_declaring(65535)),
        "compressed frame declares 65535 x 65535 pixels",
    ),
    failed(
        "jpeg-lossless-declaring-65535-squared",
        lambda: jpeg_lossless(jpeg_declaring(65535)),
        "compressed frame declares 65535 x 65535 pixels",
    ),
    failed(
        "rle-runs-decoding-to-128-mb",
        lambda: with_frame(RLELossless, rle_bomb),
        "an RLE segment decodes to more than",
    ),
    # attributes that break the grayscale pipeline
    failed(
        "rescale-slope-nan",
        lambda: with_values(RescaleSlope=b"NaN", RescaleIntercept=b"0"),
        "not finite numbers",
    ),
    failed("voi-lut-40-bits", broken_voi_lut, "cannot apply the modality LUT or VOI"),
    failed(
        "number-of-frames-not-a-number",
        lambda: with_values(NumberOfFrames=b"abc"),
        "NumberOfFrames is not an integer",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, battery: Running, engine: InferenceEngine) -> None:
    check_case(case, battery, engine)


def test_decoding_refuses_images_above_max_image_pixels_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.inference.decoders

    def no_decoding(*_: object, **__: object) -> None:
        raise AssertionError("the decoder was called")

    monkeypatch.setattr(node.inference.decoders, "pixel_array", no_decoding)
    within = write(radiograph(), tmp_path / "within.dcm")  # 4096 pixels
    bomb = compressed(JPEG2000Lossless)
    frame = j2k_declaring(60000)(
        bytearray(next(generate_frames(bomb.PixelData, number_of_frames=1)))
    )
    bomb.PixelData = encapsulate([bytes(frame)])
    lying = write(bomb, tmp_path / "lying.dcm")
    [over] = DicomPreprocessor(workers=0, max_pixels=4095).map_with_display([within])
    [codestream] = DicomPreprocessor(workers=0).map_with_display([lying])
    assert isinstance(over, UndecodableImage)
    assert str(over) == "image of 64 x 64 x 1 pixels exceeds 4095"
    assert isinstance(codestream, UndecodableImage)
    assert "compressed frame declares 60000 x 60000 pixels" in str(codestream)


def test_deflate_bomb_is_refused_by_the_decoder_without_inflating_it(
    tmp_path: Path, deflate_bomb: bytes
) -> None:
    path = tmp_path / "bomb.dcm"
    path.write_bytes(deflate_bomb)
    with PeakMemory() as memory:
        [result] = DicomPreprocessor(workers=0).map_with_display([path])
    assert isinstance(result, UndecodableImage)
    assert str(result).startswith("deflated data set inflates to more than")
    assert memory.growth < 64 * 1024 * 1024, f"peak memory grew by {memory.growth >> 20} MiB"
    # A deflated image of the size it says it is still decodes.
    good = radiograph()
    good.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ok = tmp_path / "deflated.dcm"
    good.save_as(ok, enforce_file_format=True)
    [decoded] = DicomPreprocessor(workers=0).map([ok])
    [plain] = DicomPreprocessor(workers=0).map([write(radiograph(), tmp_path / "plain.dcm")])
    assert isinstance(decoded, torch.Tensor) and isinstance(plain, torch.Tensor), decoded
    assert torch.equal(decoded, plain)


def test_max_image_pixels_from_the_configuration(
    make_node: Callable[..., Node], engine: InferenceEngine, tmp_path: Path
) -> None:
    clock = FakeClock()
    node = make_node(clock=clock, model={"max_image_pixels": 4095})
    ds = radiograph()  # 64 x 64 = 4096 pixels
    assert storescu(node.scp.port, [write(ds, tmp_path / "a.dcm")]).returncode == 0
    stored = instance(node, str(ds.SOPInstanceUID))
    assert stored is not None
    clock.advance(3600)
    node.scheduler.tick()
    worker = build_worker(node.config, engine, clock)
    try:
        assert worker.run_once()
        worker.drain()
    finally:
        worker.close()
    result = study(node, stored.study_id)
    assert (result.state, result.reason) == (
        "FAILED",
        FAILED_PREFIX + "image of 64 x 64 x 1 pixels exceeds 4095",
    )
