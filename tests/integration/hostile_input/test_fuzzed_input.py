"""Property-based: mutated data sets through the ingest header parsing (node/receive/headers.py
``header_of``) and the decoding path (``DicomPreprocessor``), which accept only the node's
own error types, never another exception or a hang."""

from __future__ import annotations

import contextlib
import copy
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from node.errors import DatasetMismatch, UndecodableImage, UnreadableDataset
from node.inference.preprocessing import DicomPreprocessor
from node.receive.headers import Header, header_of
from tests.support.factory import raw
from tests.support.hostile import compressed, radiograph
from tests.support.hostile_node import MEMORY_BOUND, PeakMemory

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

_SEEDS: dict[str, tuple[Dataset, bytes]] = {}


def seeds() -> dict[str, tuple[Dataset, bytes]]:
    """Valid data sets and their Part 10 files to mutate: native, RLE, JPEG 2000, JPEG-LS,
    deflated and implicit VR 64 x 64 radiographs (made once, never changed)."""
    if not _SEEDS:
        made = {"native": radiograph()}
        for name, syntax in [
            ("rle", RLELossless),
            ("j2k", JPEG2000Lossless),
            ("jls", JPEGLSLossless),
        ]:
            made[name] = compressed(syntax)
        for name, syntax in [
            ("deflated", DeflatedExplicitVRLittleEndian),
            ("implicit", ImplicitVRLittleEndian),
        ]:
            made[name] = radiograph()
            made[name].file_meta.TransferSyntaxUID = syntax
        for name, ds in made.items():
            fp = DicomBytesIO()
            ds.save_as(fp, enforce_file_format=True)
            _SEEDS[name] = (ds, fp.getvalue())
    return _SEEDS


HOSTILE_VALUES = [
    b"",
    b"0",
    b"-1",
    b"65535",
    b"4294967295",
    b"abc",
    b"NaN",
    b"inf",
    b"1e308",
    b"../../etc/passwd",
    b"1.2.3/../../x",
    b"\x00" * 8,
    b"\xff" * 9,
    b"\\".join([b"1"] * 50),
]
MUTATED_KEYWORDS = [
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "PlanarConfiguration",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "RescaleSlope",
    "RescaleIntercept",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SpecificCharacterSet",
    "BodyPartExamined",
]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(seeds())))
    seed, data = seeds()[name]
    if draw(st.booleans()):  # element value mutations, written as raw bytes
        ds = copy.deepcopy(seed)
        ds.preamble = b"\x00" * 128
        for keyword in draw(st.lists(st.sampled_from(MUTATED_KEYWORDS), min_size=1, max_size=3)):
            tag = Tag(tag_for_keyword(keyword))
            value = draw(st.sampled_from(HOSTILE_VALUES) | st.binary(max_size=24))
            value = value if dictionary_VR(tag) not in ("US", "UL") else value[:2].ljust(2, b"\0")
            raw(ds, keyword, value)
        fp = DicomBytesIO()
        with contextlib.suppress(Exception):  # pydicom refuses to write some values: no change
            ds.save_as(fp, enforce_file_format=False)
            data = fp.getvalue()
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 6))):  # byte flips, overwrites, cuts
        if len(data) <= 133:
            break
        kind = draw(st.sampled_from(["flip", "overwrite", "cut", "duplicate"]))
        at = draw(st.integers(132, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            data[at : at + 4] = draw(st.binary(min_size=4, max_size=4))
        elif kind == "cut":
            del data[at:]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return name, bytes(data)


class Hang(BaseException):  # not an Exception: nothing on the way may swallow it
    pass


def _alarm(*_: object) -> None:
    raise Hang


FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(case=mutated())
def test_fuzzed_headers_give_only_ingest_errors(case: tuple[str, bytes], tmp_path: Path) -> None:
    name, data = case
    path = tmp_path / "fuzzed.dcm"
    path.write_bytes(data)
    ds, _ = seeds()[name]
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        header = header_of(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        assert isinstance(header, Header)
    except (UnreadableDataset, DatasetMismatch):  # 0xC000 / 0xC001, 0xA900
        pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@FUZZ
@given(case=mutated())
def test_fuzzed_images_give_a_tensor_or_undecodable_image(
    case: tuple[str, bytes], tmp_path: Path
) -> None:
    _, data = case
    path = tmp_path / "fuzzed.dcm"
    path.write_bytes(data)
    preprocessor = DicomPreprocessor(workers=0, size=64)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        with PeakMemory() as memory:
            [result] = preprocessor.map_with_display([path])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert memory.growth < MEMORY_BOUND
    if not isinstance(result, UndecodableImage):
        tensor, display = result
        assert tensor.shape == (3, 64, 64) and torch.isfinite(tensor).all()
        assert np.isfinite(display).all() and display.min() >= 0 and display.max() <= 1
