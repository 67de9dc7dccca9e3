"""Hostile and broken input over real loopback associations.

Every case is sent by a real SCU (pynetdicom; dcmtk's storescu plays the honest client) to a node
running in this process, and must

- get a clear C-STORE status with an ErrorComment (0xC000 cannot parse, 0xA900 data set differs
  from the request, 0xC001 missing or invalid UID, 0xA700 out of resources), or be stored
  (0x0000) and then end FAILED, when a worker processes its study, with a reason that names the
  image ("input fault: image 1 of 1 cannot be used: ...");
- leave the node serving: the whole battery runs against one node, and after each case a good
  client (dcmtk's storescu) on a new association stores an image;
- put no file anywhere but the node's own random names under the data directory (instances/,
  results/, an empty tmp/ and the database), whatever path a UID spells;
- keep memory bounded: the process's peak resident memory (the SCP and the worker run here) may
  not grow by more than MEMORY_BOUND while the case is received and processed.

Then property-based tests mutate valid data sets (byte flips, truncation, element values) through
the ingest header parsing (node/scp.py ``header_of``) and the decoding path (node/engine.py
``DicomPreprocessor``) and accept only the node's own error types, never another exception or a
hang.

Comments marked "pynetdicom/pydicom alone" describe what the libraries do by themselves and
what node/scp.py does about it.
"""

from __future__ import annotations

import contextlib
import copy
import re
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db import IngestRejection, Instance, Study
from node.engine import DicomPreprocessor, InferenceEngine
from node.errors import DatasetMismatch, UndecodableImage, UnreadableDataset
from node.headers import Header, header_of
from node.model import MuraDenseNet
from node.service import Node
from node.worker import Worker
from tests.support.factory import (
    BASIC_TEXT_SR,
    CR,
    DX_PRESENTATION,
    IMAGE_PIXEL_KEYWORDS,
    make_radiograph,
    raw,
    storescu,
    write,
)
from tests.support.nodes import FakeClock, node_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

MEMORY_BOUND = 200 * 1024 * 1024
SCRATCH = tempfile.gettempdir()  # the node's tests point tempfile at its data directory
NO_STATUS = -1  # the association ended without a C-STORE response
PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
FAILED_PREFIX = "input fault: image 1 of 1 cannot be used: "
NODE_FILE = re.compile(r"^(instances|results)/([0-9a-f]{2})/\2[0-9a-f]{30}\.dcm$")
DATABASE_FILE = re.compile(r"^mura-node\.db(-wal|-shm|-journal)?$")


# --- building hostile data sets -------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """What goes on the wire: data set bytes, and the C-STORE request's UIDs and syntax."""

    body: bytes
    sop_class: str
    sop_instance: str
    syntax: str = ExplicitVRLittleEndian


def radiograph(**kwargs: object) -> Dataset:
    return make_radiograph(rows=64, columns=64, body_part="HAND", **kwargs)  # type: ignore[arg-type]


def encode(ds: Dataset, *, implicit: bool = False) -> bytes:
    """The data set's bytes (no File Meta), little endian, explicit or implicit VR."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def part10(hostile: Hostile) -> bytes:
    """A Part 10 file whose File Meta names the request's UIDs and syntax, followed by the body
    as it is: pynetdicom's chunked sender takes the request from the File Meta and sends the
    rest byte for byte."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = hostile.sop_class
    meta.MediaStorageSOPInstanceUID = hostile.sop_instance
    meta.TransferSyntaxUID = hostile.syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    # (a request without a SOP Instance UID needs a File Meta that pydicom would not write)
    write_file_meta_info(fp, meta, enforce_standard=bool(hostile.sop_instance))
    return fp.getvalue() + hostile.body


def of(ds: Dataset, body: bytes | None = None, **request: str) -> Hostile:
    return Hostile(
        encode(ds) if body is None else body,
        request.get("sop_class", str(ds.SOPClassUID)),
        request.get("sop_instance", str(ds.SOPInstanceUID)),
        request.get("syntax", ExplicitVRLittleEndian),
    )


def offset_of(body: bytes, group: int, element: int) -> int:
    """Where an element's tag starts, searched in the header only (not in pixel values)."""
    end = body.index(PIXEL_TAG) if PIXEL_TAG in body else len(body)
    if (group, element) == (0x7FE0, 0x0010):
        return end
    return body.index(struct.pack("<HH", group, element), 0, end)


def with_uid(keyword: str, value: str) -> Hostile:
    ds = radiograph()
    setattr(ds, keyword, value)
    if keyword == "SOPInstanceUID":
        ds.file_meta.MediaStorageSOPInstanceUID = value
    return of(ds)


def without(*keywords: str, **kwargs: object) -> Dataset:
    ds = radiograph(**kwargs)
    for keyword in keywords:
        delattr(ds, keyword)
    return ds


def with_values(**values: object) -> Hostile:
    ds = radiograph()
    for keyword, value in values.items():
        if isinstance(value, bytes):
            raw(ds, keyword, value)
        else:
            setattr(ds, keyword, value)
    return of(ds)


def compressed(syntax: str, **kwargs: object) -> Dataset:
    ds = radiograph(**kwargs)
    ds.compress(syntax)
    return ds


def with_frame(syntax: str, change: Callable[[bytearray], bytes | bytearray]) -> Hostile:
    ds = compressed(syntax)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    ds.PixelData = encapsulate([bytes(change(frame))])
    return of(ds, syntax=syntax)


def j2k_declaring(size: int) -> Callable[[bytearray], bytearray]:
    """A JPEG 2000 codestream whose SIZ says size x size (one tile), the rest of a 64 x 64 one."""

    def change(frame: bytearray) -> bytearray:
        assert frame[:4] == b"\xff\x4f\xff\x51"
        struct.pack_into(">6I", frame, 8, size, size, 0, 0, size, size)
        return frame

    return change


def jpeg_declaring(size: int) -> Callable[[bytearray], bytearray]:
    """A JPEG or JPEG-LS frame whose frame header (SOF) says size x size."""

    def change(frame: bytearray) -> bytearray:
        sof = next(frame.find(m) for m in (b"\xff\xf7", b"\xff\xc3", b"\xff\xc0") if m in frame)
        struct.pack_into(">HH", frame, sof + 5, size, size)
        return frame

    return change


def jpeg_lossless(change: Callable[[bytearray], bytearray]) -> Hostile:
    """A JPEG lossless (SV1) radiograph made by dcmtk, with its frame changed."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as scratch:
        plain = write(radiograph(), Path(scratch) / "plain.dcm")
        encoded = Path(scratch) / "jpeg.dcm"
        subprocess.run(["dcmcjpeg", "+e1", plain, encoded], check=True, capture_output=True)
        ds = dcmread(encoded)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    ds.PixelData = encapsulate([bytes(change(frame))])
    return of(ds, syntax=str(ds.file_meta.TransferSyntaxUID))


def rle_bomb(frame: bytearray) -> bytes:
    """Two RLE segments of 500,000 runs of 128 zeros each: 128 MB out of 2 MB in."""
    segment = b"\x81\x00" * 500_000
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    return header + segment + segment


def short_pixels() -> Hostile:
    ds = radiograph()
    ds.PixelData = ds.PixelData[:1000]
    return of(ds)


def long_pixels() -> Hostile:
    ds = radiograph()
    ds.PixelData = ds.PixelData + bytes(50_000)
    return of(ds)


def truncated(cut: Callable[[bytes], int]) -> Hostile:
    ds = radiograph()
    body = encode(ds)
    return of(ds, body[: cut(body)])


def length_lie(group: int, element: int, length: int) -> Hostile:
    """An element's length field larger than the bytes that follow it."""
    ds = radiograph()
    if (group, element) == (0x0029, 0x1010):  # a private OB element just before the pixels
        ds.add_new(0x00290010, "LO", "HOSTILE")
        ds.add_new(0x00291010, "OB", b"\x00" * 4)
    body = bytearray(encode(ds))
    at = offset_of(bytes(body), group, element)
    if body[at + 4 : at + 6] in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        struct.pack_into("<L", body, at + 8, length)
    else:
        struct.pack_into("<H", body, at + 6, min(length, 0xFFFF))
    return of(ds, bytes(body))


def undefined_length_private() -> Hostile:
    ds = radiograph()
    ds.add_new(0x00290010, "LO", "HOSTILE")
    ds.add_new(0x00291010, "OB", b"\x00" * 4)
    body = bytearray(encode(ds))
    struct.pack_into("<L", body, offset_of(bytes(body), 0x0029, 0x1010) + 8, 0xFFFFFFFF)
    return of(ds, bytes(body))


def implicit_sent_as_explicit() -> Hostile:
    ds = radiograph()
    return of(ds, encode(ds, implicit=True), syntax=ExplicitVRLittleEndian)


def explicit_sent_as_implicit() -> Hostile:
    ds = radiograph()
    return of(ds, encode(ds), syntax=ImplicitVRLittleEndian)


def raw_bytes_claiming_jpeg2000() -> Hostile:
    ds = radiograph()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return of(ds, encode(ds), syntax=JPEG2000Lossless)


def plain_bytes_claiming_deflate() -> Hostile:
    ds = radiograph()
    return of(ds, encode(ds), syntax=DeflatedExplicitVRLittleEndian)


def broken_items() -> Hostile:
    ds = compressed(JPEG2000Lossless)
    data = bytearray(ds.PixelData)
    data[8:12] = b"\x12\x34\x56\x78"  # the first fragment's item tag is no item tag
    ds.PixelData = bytes(data)
    return of(ds, syntax=JPEG2000Lossless)


def text_report() -> Hostile:
    ds = without(
        *IMAGE_PIXEL_KEYWORDS,
        sop_class=BASIC_TEXT_SR,
    )
    ds.Modality = "SR"
    return of(ds)


def broken_voi_lut() -> Hostile:
    ds = radiograph()
    item = Dataset()
    item.LUTDescriptor = [10, 0, 40]  # 40 bits per entry: no such LUT
    item.LUTData = struct.pack("<3H", 1, 2, 3)
    ds.VOILUTSequence = Sequence([item])
    return of(ds)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Hostile]
    status: int
    says: str = ""  # in the ErrorComment (refused) or the FAILED reason (stored)
    outcome: str | None = None  # for a stored image: "FAILED" or "DONE"; None: not analysed


def refused(name: str, build: Callable[[], Hostile], status: int, says: str) -> Case:
    return Case(name, build, status, says)


def failed(name: str, build: Callable[[], Hostile], says: str) -> Case:
    return Case(name, build, 0x0000, says, "FAILED")


CASES = [
    # truncated data sets
    refused(
        "truncated-before-study-uid",
        lambda: truncated(lambda b: offset_of(b, 0x0020, 0x000D)),
        0xC001,
        "study_instance_uid is missing",
    ),
    refused(
        "truncated-inside-sop-instance-uid",
        lambda: truncated(lambda b: offset_of(b, 0x0008, 0x0018) + 20),
        0xA900,
        "SOPInstanceUID in the data set differs",
    ),
    failed(
        "truncated-inside-image-module",
        lambda: truncated(lambda b: offset_of(b, 0x0028, 0x0010) + 3),
        "image has 0 rows and 0 columns",
    ),
    failed(
        "truncated-inside-pixel-data",
        lambda: truncated(lambda b: len(b) - 1000),
        "cannot decode pixel data",
    ),
    # data set differing from the request
    refused(
        "sop-instance-differs",
        lambda: of(radiograph(), sop_instance=generate_uid()),
        0xA900,
        "SOPInstanceUID in the data set differs",
    ),
    refused(
        "sop-class-differs",
        lambda: of(radiograph(), sop_class=DX_PRESENTATION),
        0xA900,
        "SOPClassUID in the data set differs",
    ),
    refused(  # the request is checked first (node/scp_requests.py)
        "request-instance-path-like",
        lambda: of(radiograph(), sop_instance="../../../../tmp/mura-hostile"),
        0xC001,
        "Affected SOP Instance UID in the request is not a valid UID",
    ),
    # invalid and path-like UIDs
    refused(
        "sop-instance-etc-passwd",
        lambda: with_uid("SOPInstanceUID", "../../etc/passwd"),
        0xC001,
        "Affected SOP Instance UID in the request is not a valid UID",
    ),
    refused(
        "sop-instance-dots-slashes",
        lambda: with_uid("SOPInstanceUID", "1.2.3/../../x"),
        0xC001,
        "Affected SOP Instance UID in the request is not a valid UID",
    ),
    refused(
        "study-uid-path-like",
        lambda: with_uid("StudyInstanceUID", "../../../../tmp/mura-hostile"),
        0xC001,
        "study_instance_uid is missing or not a valid UID",
    ),
    refused(
        "series-uid-backslashes",
        lambda: with_uid("SeriesInstanceUID", "..\\..\\mura-hostile"),
        0xC001,
        "series_instance_uid is not a valid UID",
    ),
    # pynetdicom/pydicom alone (the next two): node/scp.py read_header cuts every value to 64 characters
    # before header_of checks it, so a StudyInstanceUID (or SeriesInstanceUID) longer than 64
    # characters is stored cut short as another, valid UID, and one that only goes bad after its
    # 64th character ("1.2.3...4/../../x") passes. node/scp.py therefore: take the four UIDs without the [:64] cut
    # (keep it for the descriptive fields), so is_uid sees the whole value.
    refused(
        "study-uid-too-long",
        lambda: with_uid("StudyInstanceUID", "1.2." + "3" * 61),
        0xC001,
        "study_instance_uid is missing or not a valid UID",
    ),
    refused(
        "series-uid-path-like-after-64-characters",
        lambda: with_uid("SeriesInstanceUID", "1.2." + "3" * 60 + "/../../../../tmp/mura-hostile"),
        0xC001,
        "series_instance_uid is not a valid UID",
    ),
    refused(
        "study-uid-missing",
        lambda: of(without("StudyInstanceUID")),
        0xC001,
        "study_instance_uid is missing or not a valid UID",
    ),
    # element lengths larger than the data
    refused(
        "patient-name-length-past-the-end",  # swallows every element after it
        lambda: length_lie(0x0010, 0x0010, 0xFFFF),
        0xC001,
        "study_instance_uid is missing or not a valid UID",
    ),
    failed(
        "private-element-length-past-the-end",  # swallows the pixel data
        lambda: length_lie(0x0029, 0x1010, 0x7FFFFFF0),
        "cannot decode pixel data",
    ),
    Case(
        "pixel-data-length-past-the-end",  # the bytes that are there make a whole image
        lambda: length_lie(0x7FE0, 0x0010, 0x7FFFFFF0),
        0x0000,
        outcome="DONE",
    ),
    # pynetdicom/pydicom alone: pydicom cannot read an undefined length on a plain element, and then
    # (filereader.read_dataset swallows the EOFError with a warning) returns an EMPTY data set,
    # which header_of answers 0xA900 "SOPClassUID in the data set differs from the request".
    # node/scp.py read_header therefore: a data set read without a SOPClassUID is UnreadableDataset
    # ("cannot parse data set: no SOP Class UID could be read") -> 0xC000.
    refused(
        "private-element-undefined-length",
        undefined_length_private,
        0xC000,
        "cannot parse data set",
    ),
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
    # pydicom notices implicit VR where explicit was negotiated (and the reverse) and reads it
    Case("implicit-sent-explicit-negotiated", implicit_sent_as_explicit, 0x0000, outcome="DONE"),
    Case("explicit-sent-implicit-negotiated", explicit_sent_as_implicit, 0x0000, outcome="DONE"),
    refused(
        "plain-bytes-claiming-deflate",
        plain_bytes_claiming_deflate,
        0xC000,
        "cannot parse data set",
    ),
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
    # non-image objects
    Case("basic-text-sr", text_report, 0x0000),  # acknowledged and ignored, bytes not kept
    failed(
        "cr-without-image",
        lambda: of(
            without(
                *IMAGE_PIXEL_KEYWORDS,
            )
        ),
        "image has 0 rows and 0 columns",
    ),
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
    # A C-STORE request without an AffectedSOPInstanceUID. pynetdicom alone: the reactor thread
    # dies on the command (AttributeError in C_STORE_RQ.decode_msg) and drops the association
    # without a response, leaving its temporary file. node/scp_requests.py checks the command
    # set first (more cases: tests/integration/test_scp_requests.py).
    refused(
        "request-without-sop-instance-uid",
        lambda: of(radiograph(), sop_instance=""),
        0xC001,
        "C-STORE request without Affected SOP Instance UID",
    ),
]


# --- the node, senders, and what is checked after every case -----------------------------


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    """An untrained engine at 64 x 64 input: what is tested here is that a study gets through,
    not what the model says, and this is many times faster than 320 x 320 on the CPU."""
    torch.manual_seed(0)
    return InferenceEngine(
        [MuraDenseNet()], [], device=torch.device("cpu"), untrained=True, input_size=64
    )


@dataclass
class Running:
    node: Node
    clock: FakeClock
    root: Path
    inputs: Path
    before: set[Path]
    passwd: int
    goods: int = 0


def started(node: Node, clock: FakeClock, root: Path) -> Running:
    inputs = root / "inputs"
    inputs.mkdir()
    before = {p for p in root.rglob("*") if p.is_file()}
    return Running(node, clock, root, inputs, before, Path("/etc/passwd").stat().st_mtime_ns)


@pytest.fixture
def running(
    make_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Running:
    """A node of its own for one test."""
    clock = FakeClock()
    node = make_node(clock=clock)
    # As `serve` does: pynetdicom's temporary files go into the data directory's tmp/.
    monkeypatch.setattr(tempfile, "tempdir", str(node.store.tmp))
    return started(node, clock, tmp_path)


@pytest.fixture(scope="module")
def battery_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One node for the whole battery: it has to keep serving through every case."""
    root = tmp_path_factory.mktemp("battery")
    clock = FakeClock()
    node = Node(node_config(root), clock=clock)
    node.start(children=False)
    try:
        yield started(node, clock, root)
    finally:
        node.stop()


@pytest.fixture
def battery(battery_node: Running, monkeypatch: pytest.MonkeyPatch) -> Running:
    monkeypatch.setattr(tempfile, "tempdir", str(battery_node.node.store.tmp))
    return battery_node


def assert_files_in_place(state: Running) -> None:
    """Everything the node wrote is under the data directory, named by the node; its tmp/ is
    empty again; nothing a path-like UID spells exists."""
    data = state.node.store.root
    assert sorted(state.node.store.tmp.iterdir()) == [], "temporary files left behind"
    for path in state.root.rglob("*"):
        if not path.is_file() or path in state.before or path.is_relative_to(state.inputs):
            continue
        assert path.is_relative_to(data), f"{path} was written outside the data directory"
        relative = path.relative_to(data).as_posix()
        assert NODE_FILE.match(relative) or DATABASE_FILE.match(relative), relative
    assert Path("/etc/passwd").stat().st_mtime_ns == state.passwd
    assert not Path("/tmp/mura-hostile").exists()
    assert not any("passwd" in p.name or "hostile" in p.name for p in data.rglob("*"))


def send(port: int, path: Path, sop_class: str, syntax: str) -> tuple[int, str]:
    """One C-STORE of a file's bytes as they are, on a new association."""
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(sop_class, syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="MURA_NODE")
    assert assoc.is_established
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        if assoc.is_established:
            assoc.release()
    if "Status" not in status:
        return NO_STATUS, ""
    return int(status.Status), str(status.get("ErrorComment", ""))


def assert_still_serving(state: Running) -> None:
    """A good client, on a new association, stores an image (a chest: it is never processed)."""
    state.goods += 1
    ds = make_radiograph(rows=16, columns=16, body_part="CHEST", seed=state.goods)
    path = write(ds, state.inputs / f"good-{state.goods}.dcm")
    result = storescu(state.node.scp.port, [path], calling="GOODPACS")
    assert result.returncode == 0, result.stderr
    assert instance(state.node, str(ds.SOPInstanceUID)) is not None


def instance(node: Node, sop_instance_uid: str) -> Instance | None:
    with Session(node.engine) as session:
        return session.scalars(
            select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
        ).one_or_none()


def study(node: Node, study_id: int) -> Study:
    with Session(node.engine) as session:
        return session.get_one(Study, study_id)


def rejections(node: Node) -> list[tuple[int, str]]:
    with Session(node.engine) as session:
        return [(r.status, r.reason) for r in session.scalars(select(IngestRejection))]


def process(state: Running, engine: InferenceEngine) -> None:
    """Complete every study, then let a worker process what became READY."""
    state.clock.advance(3600)
    state.node.scheduler.tick()
    worker = Worker(state.node.config, engine, state.clock)
    try:
        while worker.run_once():
            pass
        worker.drain()
    finally:
        worker.close()


class PeakMemory:
    """Growth of this process's peak resident set (VmHWM) over a block.

    Writing 5 to /proc/self/clear_refs resets the peak to the current size; where the kernel
    does not allow that, growth is counted from the peak so far (which can only undercount)."""

    def __enter__(self) -> PeakMemory:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        self.start = _status_kib("VmHWM")
        return self

    def __exit__(self, *_: object) -> None:
        self.growth = (_status_kib("VmHWM") - self.start) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@contextlib.contextmanager
def expected_thread_deaths(expected: bool = True) -> Iterator[None]:
    """Where a case makes a pynetdicom thread die on purpose (the node's reactor thread on an
    undecodable request, the sender of an aborted transfer), that is not a failure of the test;
    anywhere else a dying thread is reported as usual."""
    if not expected:
        yield
        return
    previous = threading.excepthook
    threading.excepthook = lambda args: None
    try:
        yield
    finally:
        threading.excepthook = previous


# --- the battery ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, battery: Running, engine: InferenceEngine) -> None:
    running, node = battery, battery.node
    hostile = case.build()
    path = running.inputs / f"{case.name}.dcm"
    path.write_bytes(part10(hostile))
    files_before = set(node.store.instances.rglob("*.dcm"))
    with PeakMemory() as memory, expected_thread_deaths(case.status == NO_STATUS):
        status, comment = send(node.scp.port, path, hostile.sop_class, hostile.syntax)
        assert status == case.status, comment
        if case.status not in (0x0000, NO_STATUS):
            assert case.says in comment
            assert any(s == status and r.startswith(comment) for s, r in rejections(node))
        stored = instance(node, hostile.sop_instance) if hostile.sop_instance else None
        if status != 0x0000:
            assert stored is None
        else:
            assert stored is not None
            if case.outcome is None:  # an object of an ignored class: recorded, not kept
                assert (stored.role, stored.file_path) == ("ignore", None)
            else:
                process(running, engine)
                result = study(node, stored.study_id)
                assert result.state == case.outcome, result.reason
                if case.outcome == "FAILED":
                    assert result.reason.startswith(FAILED_PREFIX), result.reason
                    assert case.says in result.reason, result.reason
    if case.outcome != "DONE":  # running the model itself may take more than the bound
        assert memory.growth < MEMORY_BOUND, f"peak memory grew by {memory.growth >> 20} MiB"
    assert set(node.store.instances.rglob("*.dcm")) - files_before == (
        {node.store.path_of(str(stored.file_path))}
        if status == 0x0000 and stored is not None and stored.file_path
        else set()
    )
    if status == NO_STATUS:
        assert len(set(node.store.instances.rglob("*.dcm")) - files_before) == 0
        # pynetdicom's leftover (see the case): empty, in the data directory's tmp/, and gone
        # after a restart (FileStore.prepare empties tmp/). Removing it sooner needs node/scp.py
        # to delete files in tmp/ that no live association is writing (a periodic sweep).
        leftovers = list(node.store.tmp.iterdir())
        assert all(p.stat().st_size == 0 for p in leftovers), leftovers
        node.store.prepare()
    assert_still_serving(running)
    assert_files_in_place(running)


def test_unsupported_syntaxes_and_classes_are_refused_at_negotiation(running: Running) -> None:
    for sop_class, syntax in [
        (CR, "1.2.840.10008.1.2.4.110"),  # JPEG XL: not in the profile
        (CR, "1.2.840.10008.1.2.2"),  # Explicit VR Big Endian (retired)
        ("1.2.3.4.5.6.7", ExplicitVRLittleEndian),  # a made-up SOP class
    ]:
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate("127.0.0.1", running.node.scp.port, ae_title="MURA_NODE")
        assert not assoc.is_established  # no acceptable presentation context: rejected
        assert_still_serving(running)
    assert_files_in_place(running)


def test_stalled_association_does_not_hold_up_others(running: Running) -> None:
    ae = AE(ae_title="STALLED")
    ae.add_requested_context(CR, ExplicitVRLittleEndian)
    stalled = ae.associate("127.0.0.1", running.node.scp.port, ae_title="MURA_NODE")
    silent = socket.create_connection(("127.0.0.1", running.node.scp.port))  # TCP only
    try:
        assert stalled.is_established  # and then sends nothing
        assert_still_serving(running)
    finally:
        stalled.abort()
        silent.close()
    assert_files_in_place(running)


def test_data_set_over_the_configured_maximum_gets_a700(
    make_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node(dicom={"max_dataset_bytes": 20_000})
    monkeypatch.setattr(tempfile, "tempdir", str(node.store.tmp))
    large = radiograph()
    large.Rows = large.Columns = 128
    large.PixelData = bytes(128 * 128 * 2)  # 32 KiB
    path = tmp_path / "large.dcm"
    path.write_bytes(part10(of(large)))
    assert send(node.scp.port, path, CR, ExplicitVRLittleEndian) == (
        0xA700,
        "data set over the maximum size (20000 bytes)",
    )
    assert instance(node, str(large.SOPInstanceUID)) is None
    assert list(node.store.tmp.iterdir()) == []
    good = write(radiograph(), tmp_path / "good.dcm")
    assert storescu(node.scp.port, [good]).returncode == 0


# --- memory and disk bounds that need node/scp.py to change ----------------------------------


@pytest.fixture(scope="module")
def deflate_bomb() -> bytes:
    """A deflated 64 x 64 radiograph whose pixel data inflates to 400 MB: a 400 KB data set."""
    ds = radiograph()
    pixels_at = encode(ds).index(PIXEL_TAG)
    header = encode(ds)[:pixels_at] + PIXEL_TAG + b"OW\x00\x00" + struct.pack("<L", 400 << 20)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [deflater.compress(header)]
    zeros = bytes(1 << 20)
    chunks += [deflater.compress(zeros) for _ in range(400)]
    chunks.append(deflater.flush())
    return part10(of(ds, b"".join(chunks), syntax=DeflatedExplicitVRLittleEndian))


def test_deflate_bomb_at_ingest_keeps_memory_bounded(
    running: Running, engine: InferenceEngine, deflate_bomb: bytes
) -> None:
    # pynetdicom/pydicom alone: node/scp.py read_header calls dcmread(stop_before_pixels=True), and pydicom
    # inflates a deflated data set whole before it reads a single element (zlib.decompress of the
    # rest of the file): this 400 KB data set costs the SCP 400 MB, a 1 GiB one (the default
    # dicom.max_dataset_bytes) 1 TB. node/scp.py therefore: for the Deflated transfer syntax, inflate only a bounded
    # prefix of the data set (zlib.decompressobj().decompress(data, max_length=...)), enough
    # for the header, and parse that with pydicom.filereader.read_dataset(..., stop_when= at pixel
    # data), as node/imaging.py read_dicom does for the worker.
    path = running.inputs / "bomb.dcm"
    path.write_bytes(deflate_bomb)
    with PeakMemory() as memory:
        status, comment = send(running.node.scp.port, path, CR, DeflatedExplicitVRLittleEndian)
        assert status in (0x0000, 0xA700, 0xC000), comment
        if status == 0x0000:  # stored: the worker refuses it without inflating it whole
            process(running, engine)
            with Session(running.node.engine) as session:
                [result] = session.scalars(select(Study).where(Study.state != "IGNORED"))
            assert result.state == "FAILED"
            assert result.reason.startswith(FAILED_PREFIX + "deflated data set inflates")
    assert memory.growth < MEMORY_BOUND, f"peak memory grew by {memory.growth >> 20} MiB"
    assert_still_serving(running)
    assert_files_in_place(running)


def test_oversized_pdu_keeps_memory_bounded(running: Running) -> None:
    # pynetdicom/pydicom alone: pynetdicom reads a whole PDU into memory before it looks at it, whatever
    # length the peer writes in its header (DULServiceProvider._read_pdu_data ->
    # AssociationSocket.recv(pdu_length)), even before any association: a client that connects
    # and sends 150 MB as one P-DATA-TF PDU costs the SCP 300 MB (the bytes, then a copy), up to
    # 8 GiB per connection. node/scp.py therefore: pass make_server a request_handler whose
    # _create_association gives the association an AssociationSocket subclass whose
    # recv(nr_bytes) raises OSError when nr_bytes is more than max(dicom.maximum_pdu_size,
    # 1 MiB) (the DUL then treats the connection as closed and the association ends).
    n = 150 << 20
    address = ("127.0.0.1", running.node.scp.port)
    with PeakMemory() as memory, socket.create_connection(address) as peer:
        peer.settimeout(30)
        peer.sendall(struct.pack(">BBL", 0x04, 0, n))  # P-DATA-TF, before any association
        chunk, sent = bytes(1 << 20), 0
        try:
            while sent < n:
                peer.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the node closed the connection: what it should do
        with contextlib.suppress(OSError):
            peer.recv(64)  # wait for the node's A-ABORT, or for it to close the connection
    assert memory.growth < MEMORY_BOUND, f"peak memory grew by {memory.growth >> 20} MiB"
    assert_still_serving(running)
    assert_files_in_place(running)


def test_aborted_transfer_leaves_no_partial_file(running: Running) -> None:
    # pynetdicom/pydicom alone: pynetdicom streams a data set into a temporary file and deletes it only after
    # the C-STORE handler ran; an association aborted (or a connection dropped) in the middle of
    # a data set leaves the partial file in <data_dir>/tmp until the node restarts, so a peer can
    # fill the disk by sending most of a large data set and aborting, again and again. Therefore
    # node/scp.py: bind a handler to evt.EVT_CONN_CLOSE (and evt.EVT_ABORTED) in StoreSCP.start
    # that closes and unlinks event.assoc.dimse.message._data_set_file when it is set.
    node = running.node
    big = radiograph()
    big.Rows = big.Columns = 2000
    big.PixelData = bytes(2000 * 2000 * 2)  # 8 MB, of which only the first 2 MB ever leave
    path = running.inputs / "big.dcm"
    path.write_bytes(part10(of(big)))
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(CR, ExplicitVRLittleEndian)
    ae.dimse_timeout = 1  # the aborted sender stops waiting for a response soon
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="MURA_NODE", max_pdu=16384)
    assert assoc.is_established
    # The sender's P-DATA-TF PDUs after the first 2 MB are never sent (other PDUs are), so the
    # abort always comes in the middle of the data set, however busy the machine is.
    send, sent = assoc.dul.socket.send, [0]

    def send_at_most_2_mb(pdu: bytes) -> None:
        if pdu[:1] == b"\x04":
            if sent[0] > 2 << 20:
                return
            sent[0] += len(pdu)
        send(pdu)

    assoc.dul.socket.send = send_at_most_2_mb  # type: ignore[method-assign]
    _config.STORE_SEND_CHUNKED_DATASET = True
    sender = threading.Thread(target=assoc.send_c_store, args=(path,))
    try:
        with expected_thread_deaths():
            sender.start()
            deadline = time.monotonic() + 30
            while not any(size > 1 << 20 for size in sizes(node.store.tmp)):
                assert time.monotonic() < deadline, "the data set never started to arrive"
                time.sleep(0.01)
            assoc.abort()
            sender.join(30)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    deadline = time.monotonic() + 5
    while list(node.store.tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(node.store.tmp.iterdir()) == []
    assert instance(node, str(big.SOPInstanceUID)) is None
    assert_still_serving(running)
    assert_files_in_place(running)


def sizes(directory: Path) -> list[int]:
    found = []
    for path in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            found.append(path.stat().st_size)
    return found


# --- the decoding path refuses absurd images before decoding --------------------------------


def test_decoding_refuses_images_above_max_image_pixels_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.imaging

    def no_decoding(*_: object, **__: object) -> None:
        raise AssertionError("the decoder was called")

    monkeypatch.setattr(node.imaging, "pixel_array", no_decoding)
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
    worker = Worker(node.config, engine, clock)
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


# --- property-based: mutated data sets through header parsing and decoding --------------------

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
