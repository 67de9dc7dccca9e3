"""Building hostile data sets: what goes on the wire for a C-STORE, and the cases of the
battery in tests/integration/hostile_input (a Case: a name, how to build the data set, and
the C-STORE status and message or the FAILED reason it must get)."""

from __future__ import annotations

import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from tests.support.factory import BASIC_TEXT_SR, IMAGE_PIXEL_KEYWORDS, make_radiograph, raw, write

SCRATCH = tempfile.gettempdir()  # the node's tests point tempfile at its data directory
NO_STATUS = -1  # the association ended without a C-STORE response
PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


@dataclass(frozen=True)
class Hostile:
    """What goes on the wire: data set bytes, and the C-STORE request's UIDs and syntax."""

    body: bytes
    sop_class: str
    sop_instance: str
    syntax: str = ExplicitVRLittleEndian


def radiograph(**kwargs: object) -> Dataset:
    """A valid 64 x 64 HAND radiograph (tests.support.factory.make_radiograph) to spoil."""
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
