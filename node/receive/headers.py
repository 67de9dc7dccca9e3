"""What the SCP reads of a received data set: its header, whole or as far as it has arrived.

Header only (``stop_before_pixels``; a deflated data set through node/deflate.py's bounded
reader): no pixel decoding. Every reader here raises only the node's ingest errors, or returns
None where a part of a data set may be anything.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import (
    _read_file_meta_info,
    read_dataset,
    read_file_meta_info,
    read_preamble,
)
from pydicom.sequence import Sequence
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from node.deflate import PIXEL_TAGS, inflate_start, read_deflated_header, skip_file_meta
from node.errors import DatasetMismatch, InvalidIdentifier, UnreadableDataset
from node.profiles import coded_region
from node.receive.scp_requests import is_uid

log = logging.getLogger(__name__)

_ANATOMIC_REGION_SEQUENCE = 0x00082218
_STUDY_INSTANCE_UID_TAG = 0x0020000D
PARTIAL_HEADER_BYTES = 256 * 1024  # read of a data set in flight, to find its StudyInstanceUID


@dataclass(frozen=True)
class Header:
    """The few attributes the node reads at ingest."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str | None
    modality: str | None
    body_part_examined: str | None
    protocol_name: str | None
    series_description: str | None
    study_description: str | None
    anatomic_region: str | None = None  # AnatomicRegionSequence's first code, "SCT:14975008"
    # The file ended before a Pixel Data element (normal for an SR; for an image, truncated or
    # without pixels). False where it is not known (a deflated data set, no transfer syntax).
    ends_before_pixel_data: bool = False


def read_header(path: Path) -> Header:
    """Parse the data set's header (no pixel data); raise UnreadableDataset on any failure."""
    try:
        ds, ended = _read_header_dataset(path)
        if "SOPClassUID" not in ds:
            # pydicom stops at an element it cannot read and returns what it had, often nothing
            raise UnreadableDataset("cannot parse data set: no SOP Class UID could be read")

        def uid(keyword: str) -> str | None:  # whole, so that is_uid sees every character
            value = ds.get(keyword)
            return None if value is None or value == "" else str(value).strip() or None

        def text(keyword: str) -> str | None:
            value = uid(keyword)
            return None if value is None else value[:64]

        header = Header(
            sop_class_uid=uid("SOPClassUID") or "",
            sop_instance_uid=uid("SOPInstanceUID") or "",
            study_instance_uid=uid("StudyInstanceUID") or "",
            series_instance_uid=uid("SeriesInstanceUID"),
            modality=text("Modality"),
            body_part_examined=text("BodyPartExamined"),
            protocol_name=text("ProtocolName"),
            series_description=text("SeriesDescription"),
            study_description=text("StudyDescription"),
            anatomic_region=anatomic_region(ds),
            ends_before_pixel_data=ended,
        )
    except UnreadableDataset:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input
        raise UnreadableDataset(f"cannot parse data set: {exc.__class__.__name__}") from None
    return header


def anatomic_region(ds: Dataset) -> str | None:
    """AnatomicRegionSequence's first item as "SCHEME:CODE" (CodingSchemeDesignator, then
    CodeValue or LongCodeValue), e.g. "SCT:14975008"; None when it is absent, empty, not a
    sequence, or its code is unusable (see node.profiles.coded_region). Never raises: a bad
    code must not cost the C-STORE; the image is then typed from its text alone."""
    if _ANATOMIC_REGION_SEQUENCE not in ds:
        return None
    try:
        items = ds[_ANATOMIC_REGION_SEQUENCE].value
        if not isinstance(items, Sequence) or not items:
            return None
        item = items[0]
        code = item.get("CodeValue") or item.get("LongCodeValue")
        return coded_region(item.get("CodingSchemeDesignator"), code)
    except Exception:  # pydicom raises many types on malformed items
        log.debug("AnatomicRegionSequence not readable; ignored", exc_info=True)
        return None


def _read_header_dataset(path: Path) -> tuple[Dataset, bool]:
    """The data set up to its pixel data, the file opened and its File Meta parsed once (this
    runs for every C-STORE), and whether the file ended before a Pixel Data element (known for
    the non-deflated transfer syntaxes only). pydicom inflates a deflated data set whole before
    it reads an element (a deflate bomb of a few hundred kilobytes is gigabytes); here only the
    first deflate.HEADER_BYTES are inflated, enough for any header (node/deflate.py)."""
    with path.open("rb") as fp:
        read_preamble(fp, False)
        syntax = _read_file_meta_info(fp).get("TransferSyntaxUID")
        if syntax is None:  # pydicom's reader guesses the encoding
            return dcmread(path, stop_before_pixels=True), False
        if syntax == DeflatedExplicitVRLittleEndian:
            return read_deflated_header(path), False
        syntax = UID(syntax)
        ds = read_dataset(
            fp,
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=lambda tag, _vr, _length: tag in PIXEL_TAGS,
        )
        # pydicom steps back to the start of the element it stopped at, if any
        return ds, not fp.read(1)


def study_of_partial_data_set(path: Path) -> str | None:
    """The StudyInstanceUID of a data set of which only a first part may have arrived.

    ``path`` is pynetdicom's temporary file of a C-STORE data set being received: preamble, File
    Meta (with the accepted transfer syntax, written whole before the first data set byte), then
    the data set's bytes so far. Only the first ``PARTIAL_HEADER_BYTES`` are read (inflated first
    for the deflated syntax), every call: the file grows while it is read. Returns the UID once
    the element after StudyInstanceUID has begun to arrive (so the value is whole), else None:
    not arrived yet, no such element, not a UID, or anything unreadable. Never raises."""
    try:
        meta = read_file_meta_info(path)
        with path.open("rb") as fp:
            skip_file_meta(fp)
            body = fp.read(PARTIAL_HEADER_BYTES)
        syntax = UID(meta.TransferSyntaxUID)
        if syntax == DeflatedExplicitVRLittleEndian:
            body = inflate_start(body, PARTIAL_HEADER_BYTES)
        passed: list[int] = []

        def past_study_uid(tag: int, _vr: str | None, _length: int) -> bool:
            if tag > _STUDY_INSTANCE_UID_TAG:
                passed.append(tag)
                return True
            return False

        ds = read_dataset(
            io.BytesIO(body),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            stop_when=past_study_uid,
        )
        element = ds.get_item(_STUDY_INSTANCE_UID_TAG) if passed else None
        raw = b"" if element is None else element.value  # not converted: no pydicom warnings
        value = raw.decode("ascii").strip("\x00 ") if isinstance(raw, bytes) else str(raw)
    except Exception:  # a part of a data set: anything may be cut off or malformed
        return None
    return value if is_uid(value) else None


def header_of(source: Path, sop_class: str, sop_instance: str, *, image: bool = False) -> Header:
    """The header, checked against the C-STORE request; raises the node's ingest errors.

    ``image``: the SOP class is one the node analyses, whose SeriesInstanceUID is required too. An image whose identifiers are missing,
    invalid or differ from the request, and whose file ends before its Pixel Data, was cut
    short (a truncated transfer or file): UnreadableDataset (0xC000), not an identifier error."""
    header = read_header(source)
    try:
        return _checked(header, sop_class, sop_instance, image)
    except (DatasetMismatch, InvalidIdentifier) as exc:
        if image and header.ends_before_pixel_data:
            raise UnreadableDataset(
                f"cannot parse data set: truncated before its Pixel Data; {exc}"
            ) from None
        raise


def _checked(header: Header, sop_class: str, sop_instance: str, image: bool) -> Header:
    if header.sop_class_uid != sop_class:
        raise DatasetMismatch("SOPClassUID in the data set differs from the request")
    if header.sop_instance_uid != sop_instance:
        raise DatasetMismatch("SOPInstanceUID in the data set differs from the request")
    for name in ("sop_instance_uid", "study_instance_uid"):
        if not is_uid(getattr(header, name)):
            raise InvalidIdentifier(f"{name} is missing or not a valid UID")
    if header.series_instance_uid is not None and not is_uid(header.series_instance_uid):
        raise InvalidIdentifier("series_instance_uid is not a valid UID")
    if image and header.series_instance_uid is None:
        # Type 1 in every image IOD; the results must name the image's series.
        raise InvalidIdentifier("series_instance_uid is missing")
    return header
