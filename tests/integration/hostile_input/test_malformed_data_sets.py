"""The battery, part one: data sets whose header or encoding is broken or lies (truncated,
differing from the request, invalid or path-like UIDs, element lengths past the end,
undefined lengths, the wrong VR encoding, non-image objects, a request without its UID).
Each case is sent to one node that must keep serving; see the package's docstring."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from node.inference.engine import InferenceEngine
from tests.support.factory import DX_PRESENTATION, IMAGE_PIXEL_KEYWORDS
from tests.support.hostile import (
    Case,
    explicit_sent_as_implicit,
    failed,
    implicit_sent_as_explicit,
    length_lie,
    of,
    offset_of,
    plain_bytes_claiming_deflate,
    radiograph,
    refused,
    text_report,
    truncated,
    undefined_length_private,
    with_uid,
    without,
)
from tests.support.hostile_node import (
    Running,
    check_case,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

CASES = [
    # truncated data sets
    refused(
        "truncated-before-study-uid",
        lambda: truncated(lambda b: offset_of(b, 0x0020, 0x000D)),
        0xC000,
        "cannot parse data set: truncated before its Pixel Data",
    ),
    refused(
        "truncated-before-series-uid",
        lambda: truncated(lambda b: offset_of(b, 0x0020, 0x000E)),
        0xC000,
        "cannot parse data set: truncated before its Pixel Data",
    ),
    refused(
        "truncated-inside-sop-instance-uid",
        lambda: truncated(lambda b: offset_of(b, 0x0008, 0x0018) + 20),
        0xC000,
        "cannot parse data set: truncated before its Pixel Data",
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
    refused(  # the request is checked first (node/receive/scp_requests.py)
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
    # pynetdicom/pydicom alone (the next two): node/receive/scp.py read_header cuts every value to 64 characters
    # before header_of checks it, so a StudyInstanceUID (or SeriesInstanceUID) longer than 64
    # characters is stored cut short as another, valid UID, and one that only goes bad after its
    # 64th character ("1.2.3...4/../../x") passes. node/receive/scp.py therefore: take the four UIDs without the [:64] cut
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
        0xC000,
        "cannot parse data set: truncated before its Pixel Data",
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
    # node/receive/scp.py read_header therefore: a data set read without a SOPClassUID is UnreadableDataset
    # ("cannot parse data set: no SOP Class UID could be read") -> 0xC000.
    refused(
        "private-element-undefined-length",
        undefined_length_private,
        0xC000,
        "cannot parse data set",
    ),
    # pydicom notices implicit VR where explicit was negotiated (and the reverse) and reads it
    Case("implicit-sent-explicit-negotiated", implicit_sent_as_explicit, 0x0000, outcome="DONE"),
    Case("explicit-sent-implicit-negotiated", explicit_sent_as_implicit, 0x0000, outcome="DONE"),
    refused(
        "plain-bytes-claiming-deflate",
        plain_bytes_claiming_deflate,
        0xC000,
        "cannot parse data set",
    ),
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
    # A C-STORE request without an AffectedSOPInstanceUID. pynetdicom alone: the reactor thread
    # dies on the command (AttributeError in C_STORE_RQ.decode_msg) and drops the association
    # without a response, leaving its temporary file. node/receive/scp_requests.py checks the command
    # set first (more cases: tests/integration/test_scp_requests.py).
    refused(
        "request-without-sop-instance-uid",
        lambda: of(radiograph(), sop_instance=""),
        0xC001,
        "C-STORE request without Affected SOP Instance UID",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(case: Case, battery: Running, engine: InferenceEngine) -> None:
    check_case(case, battery, engine)
