"""Attributes the results copy from their sources: any value, valid or not, still gives results that
highdicom writes and dciodvfy passes; valid values are copied, unambiguous forms normalised.

The property test writes each generated value as raw bytes into a real file, reads it back as the
worker does (pydicom, with warnings), and builds the SR and an SC from it. Its size is
``MURA_SANITISE_EXAMPLES`` (default 100; the figure in docs/results.md is from a run of 500).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import generate_uid

from node.results.gsps import build_gsps
from node.results.identity import add_study_level
from node.results.order import SourcePosition
from node.results.sanitise import (
    COPIED,
    COPIED_KEYWORDS,
    RESULT_CHARACTER_SET,
    Action,
    HeaderChange,
    clean_source,
    summarise,
)
from node.results.sc import build_sc
from node.results.sr import build_sr
from node.results.summary import build_summary
from node.results.value_checks import date, patient_orientation, time, uid
from tests.support.factory import make_radiograph, raw, write
from tests.support.results import ALGORITHM, IDENTITY, result

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXAMPLES = int(os.environ.get("MURA_SANITISE_EXAMPLES", "100"))
TYPE2 = {item.keyword for item in COPIED if item.type == "2"}
VR_OF = {
    "PatientName": "PN",
    "ReferringPhysicianName": "PN",
    "PatientBirthDate": "DA",
    "StudyDate": "DA",
    "AcquisitionDate": "DA",
    "StudyTime": "TM",
    "AcquisitionTime": "TM",
    "FrameOfReferenceUID": "UI",
    "PatientOrientation": "CS2",
}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("19700101", "19700101"),
        ("1970-01-01", "19700101"),
        ("1970/01/31", "19700131"),
        ("1970.12.01", "19701201"),
        (" 20240229 ", "20240229"),
    ],
)
def test_dates_are_copied_or_normalised(given: str, expected: str) -> None:
    assert date(given) == expected


@pytest.mark.parametrize(
    "given", ["00/00/0000", "00000000", "20230229", "01/02/2020", "1970", "19701301", "x"]
)
def test_ambiguous_or_impossible_dates_are_refused(given: str) -> None:
    with pytest.raises(ValueError):
        date(given)


@pytest.mark.parametrize(
    ("given", "expected"),
    [("091500", "091500"), ("09:15:00", "091500"), ("09:15", "0915"), ("23:59:59.5", "235959.5")],
)
def test_times_are_copied_or_normalised(given: str, expected: str) -> None:
    assert time(given) == expected


@pytest.mark.parametrize(
    "given", ["25:00:00", "9:15", "noon", "12:60", "0900-1000", "-0900", "0900-", "235960"]
)
def test_invalid_times_are_refused(given: str) -> None:
    with pytest.raises(ValueError):
        time(given)


def test_orientation_accepts_compound_letters_and_refuses_contradictions() -> None:
    assert patient_orientation(["AL", "F"]) == ["AL", "F"]
    for bad in (["A"], ["AP", "F"], ["X", "F"], ["", "F"], ["A", "F", "L"]):
        with pytest.raises(ValueError):
            patient_orientation(bad)


def test_orientation_along_one_axis_twice_is_refused() -> None:
    for bad in (["A", "A"], ["A", "P"], ["LF", "R"]):
        with pytest.raises(ValueError):
            patient_orientation(bad)


@pytest.mark.parametrize("given", ["0", "0.0", "1", "1..2", "01.2"])
def test_unusable_uids_are_refused(given: str) -> None:
    with pytest.raises(ValueError):
        uid(given)


def test_windows_1252_declared_as_latin_1_is_restored() -> None:
    source = make_radiograph()
    source.SpecificCharacterSet = "ISO_IR 100"
    raw(source, "PatientName", b"Lef\x8cvre^Fran\xe7ois")  # 0x8C: OE ligature in Windows-1252
    raw(source, "InstitutionName", b"Clinique \x93Saint\x94 \x81")  # 0x81: undefined
    clean, changes = clean_source(source)
    assert str(clean.PatientName) == "LefŒvre^François"
    assert "InstitutionName" not in clean  # an undefined byte stays a control character
    assert clean.SpecificCharacterSet == RESULT_CHARACTER_SET  # Œ is not in ISO 8859-1
    assert {c.keyword for c in changes} == {"PatientName", "InstitutionName"}


def test_text_the_declared_character_set_cannot_decode_is_not_copied() -> None:
    source = make_radiograph()
    raw(source, "SpecificCharacterSet", b"ISO_IR 192")
    raw(source, "PatientName", b"Doe^J\xffrg")  # not UTF-8
    clean, changes = clean_source(source)
    assert clean.PatientName == ""
    assert [str(c) for c in changes] == [
        "PatientName left empty (not decodable in the declared character set)"
    ]


@pytest.mark.parametrize(
    ("term", "codec", "name"),
    [
        ("ISO_IR 100", "latin-1", "Müller-Lüdenscheidt-Größenwahn-Schönefeld^Hans-Jürgen Björn"),
        ("ISO_IR 144", "iso8859-5", "Константинопольский^Александр^Владимирович"),
        ("ISO_IR 126", "iso8859-7", "Παπαδημητρακόπουλος-Χατζηγεωργίου^Αλέξανδρος"),
    ],
)
def test_names_stay_in_the_source_character_set_when_it_holds_them(
    term: str, codec: str, name: str
) -> None:
    """Over 64 bytes in UTF-8 but not in their own single-byte character set: kept whole."""
    assert len(name.encode("utf-8")) > 64 >= len(name.encode(codec))
    source = make_radiograph()
    raw(source, "SpecificCharacterSet", term.encode())
    raw(source, "PatientName", name.encode(codec))
    clean, changes = clean_source(source)
    assert (str(clean.PatientName), clean.SpecificCharacterSet, changes) == (name, term, [])


def test_summary_counts_images_and_never_names_values() -> None:
    change = HeaderChange("PatientBirthDate", Action.EMPTIED, "not a date")
    line = summarise([[change], [change], []])
    assert line == "PatientBirthDate left empty (not a date) in 2 images"
    assert summarise([[], []]) is None


# -- every copied attribute, any value ------------------------------------------------------------

CHARACTER_SETS = [
    None,
    b"ISO_IR 100",
    b"ISO_IR 192",
    b"\\ISO 2022 IR 87",
    b"ISO 2022 IR 6\\ISO 2022 IR 87\\ISO 2022 IR 159",
    b"ISO_IR 144",
    b"GB18030",
    b"ISO_IR100",  # misspelt
    b"ISO-8859-1",  # not a DICOM term
    b"\\",
]
_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from("\\^= \x00\x1b\r\n"),
    max_size=70,
)
_ISO2022 = st.sampled_from(
    [
        b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B",
        b"\x1b$B;3ED\x1b(B",
        b"\x1b$B",  # an escape with nothing after it
    ]
)
_VALID = {
    "DA": st.dates().map(lambda d: d.strftime("%Y%m%d").encode()),
    "TM": st.times().map(lambda t: t.strftime("%H%M%S").encode()),
    "PN": st.sampled_from([b"Doe^Jane", b"M\xfcller^Hans", b"", b"^^^^"]),
}
_SLOPPY = {
    "DA": st.sampled_from([b"00/00/0000", b"1970-01-01", b"1970.01.01", b"01/02/1970", b"1970"]),
    "TM": st.sampled_from(
        [b"09:15:00", b"09:15", b"24:00:00", b"9.15", b"091500.1234567", b"0900-1000", b"235960"]
    ),
    "UI": st.sampled_from([b"0", b"0.0", b"1.2.3", b"1.02.3", b"1.2.840.10008.1.2"]),
    "CS2": st.sampled_from([b"A\\A", b"A\\P", b"AL\\F", b"L\\F", b"F\\F"]),
}


@st.composite
def value_for(draw: st.DrawFn, keyword: str) -> bytes:
    vr = VR_OF.get(keyword)
    options = [
        st.binary(max_size=40),
        _TEXT.map(lambda t: t.encode("utf-8")),
        _TEXT.map(lambda t: t.encode("latin-1", "replace")),
        _TEXT.map(lambda t: t.encode("iso8859-5", "replace")),
        _ISO2022,
        st.sampled_from([b"", b" ", b"U", b"0,143\\0,143", b"L", b"A\\F", b"AL\\HP", b"1.5"]),
    ]
    if vr in _VALID:
        options.append(_VALID[vr])
    if vr in _SLOPPY:
        options.append(_SLOPPY[vr])
    return draw(st.one_of(options))


@st.composite
def dirty_headers(draw: st.DrawFn) -> dict[str, bytes | None]:
    keywords = draw(st.lists(st.sampled_from(COPIED_KEYWORDS), unique=True, max_size=8))
    values: dict[str, bytes | None] = {k: draw(value_for(k)) for k in keywords}
    values["SpecificCharacterSet"] = draw(st.sampled_from(CHARACTER_SETS))
    if draw(st.booleans()):
        values["Modality"] = draw(st.sampled_from([None, b"", b"OT", b"cr", b"CR"]))
    return values


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(values=dirty_headers(), dx=st.booleans())
def test_any_copied_value_gives_valid_results(
    tmp_path: Path, values: dict[str, bytes | None], dx: bool
) -> None:
    source = make_radiograph(
        sop_class="1.2.840.10008.5.1.4.1.1.1.1" if dx else "1.2.840.10008.5.1.4.1.1.1",
        rows=16,
        columns=16,
    )
    for keyword, value in values.items():
        if value is None:
            if keyword in source:
                delattr(source, keyword)
        else:
            raw(source, keyword, value)
    path = write(source, tmp_path / "source.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read = dcmread(path, stop_before_pixels=True)
        clean, changes = clean_source(read)
    sr = build_sr(
        [clean],
        result((0.7,)),
        ALGORITHM,
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
    )
    sc = build_sc(
        clean,
        np.zeros((8, 8, 3), np.uint8),
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        probability=0.7,
        algorithm_name="MURA DenseNet-169",
    )
    add_study_level(sr, clean, datetime.datetime.now())  # as the worker does
    summary = build_summary(
        [clean],
        np.zeros((8, 8, 3), np.uint8),
        result((0.7,)),
        ALGORITHM,
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
    )
    SourcePosition.of(read)  # what the banner shows of the source never raises either
    gsps = build_gsps(
        read,
        clean,
        np.ones((2, 2), np.float32),
        "AI",
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    assert gsps is not None
    sr.save_as(tmp_path / "sr.dcm")
    sc.save_as(tmp_path / "sc.dcm")
    summary.save_as(tmp_path / "summary.dcm")
    gsps.save_as(tmp_path / "gsps.dcm")
    names = ("sr.dcm", "sc.dcm", "summary.dcm", "gsps.dcm")
    checks = [
        subprocess.Popen(
            ["dciodvfy", str(tmp_path / name)],
            stderr=subprocess.PIPE,
            text=True,
            errors="backslashreplace",  # it prints values in the file's own character set
        )
        for name in names
    ]
    for check, name in zip(checks, names, strict=True):
        _, stderr = check.communicate()
        errors = [line for line in stderr.splitlines() if line.startswith("Error")]
        assert errors == [], (name, values)
    for written in map(dcmread, (tmp_path / name for name in names)):
        for keyword in TYPE2:
            assert keyword in written  # Type 2: present, if only empty
        assert written.PatientID == clean.PatientID
        assert str(written.PatientName) == str(clean.PatientName)
    for change in changes:  # the history names attributes, never their values
        assert change.keyword in (*COPIED_KEYWORDS, "Modality", "SpecificCharacterSet")
        assert change.why in str(change) and str(values.get(change.keyword)) not in change.why


@given(
    name=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20),
    birth=st.dates(datetime.date(1000, 1, 1), datetime.date(2999, 12, 31)),
)
@settings(max_examples=50, deadline=None)
def test_valid_values_are_copied_unchanged(name: str, birth: object) -> None:
    source = make_radiograph()
    source.SpecificCharacterSet = "ISO_IR 192"
    name = name.replace("\\", "").replace("=", "").replace("^", "").strip()
    source.PatientName = name
    source.PatientBirthDate = birth.strftime("%Y%m%d")  # type: ignore[attr-defined]
    clean, changes = clean_source(source)
    assert changes == []
    assert str(clean.PatientName) == name
    assert clean.PatientBirthDate == source.PatientBirthDate
    if not name.isascii():
        assert clean.SpecificCharacterSet == RESULT_CHARACTER_SET


def test_real_clinical_images_need_no_change() -> None:
    from pydicom.data import get_testdata_file

    for name in ("RG3_UNCR.dcm", "RG1_UNCR.dcm"):
        source = dcmread(get_testdata_file(name), stop_before_pixels=True)
        clean, changes = clean_source(source)
        assert clean.PatientID == source.PatientID
        assert [c.keyword for c in changes] in ([], ["PatientOrientation"]), changes
