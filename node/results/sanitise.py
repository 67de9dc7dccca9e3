"""The attributes results copy from their source images, cleaned so that a header never costs a result.

The SR and the heatmap SCs file themselves with the source's patient and study, name the source's
acquisition equipment (Contributing Equipment) and describe each source image (image library,
laterality, orientation). Hospitals send values that pydicom reads, with warnings, but that are not
valid for their VR: dates such as ``00/00/0000``, ACR-NEMA times ``09:15:00``, PatientSex ``U``,
decimal commas, ISO 2022 character sets that highdicom does not accept, missing Type 1 attributes.
highdicom validates everything it writes, so the writers never see the source itself: they get the
clean copy made here (`clean_source`), attribute by attribute (PS3.3 module tables; Type as in the
result IODs):

- valid as it is (pydicom's VR checks, PS3.5 6.2, plus the attribute's defined terms): copied;
- one unambiguous meaning in a common non-standard form: normalised (dates ``YYYY-MM-DD``,
  ``YYYY/MM/DD``, ``YYYY.MM.DD``; times ``HH:MM[:SS[.F]]``; PatientSex in lower case);
- otherwise: a Type 2 attribute is left empty, a Type 3 attribute is dropped. Image-library
  descriptors that cannot be read (ImagerPixelSpacing, PatientOrientation, laterality) are left out.

Modality, Type 1 and not always sent, is taken from the SOP class. Text is what pydicom decoded
with the source's declared character set (misspelt terms and missing first values included); the
copy is declared ISO_IR 192 (UTF-8) when any of it is not ASCII, so every source string fits.

Only a chosen set is copied: what identifies the patient, study and acquisition, not the rest of
the patient's record (allergies, comments, trial data stay in the source). Each change is returned
as a `HeaderChange` naming the attribute by keyword, never its value (the worker records them in
the study's history).
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import validate_value

CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"
RESULT_CHARACTER_SET = "ISO_IR 192"


class Action(enum.StrEnum):
    NORMALISED = "normalised"
    EMPTIED = "left empty"
    DROPPED = "left out"
    DERIVED = "derived"


@dataclass(frozen=True)
class HeaderChange:
    """One attribute the results do not copy as the source has it; never carries the value."""

    keyword: str
    action: Action
    why: str

    def __str__(self) -> str:
        return f"{self.keyword} {self.action} ({self.why})"


# -- value checks: each returns the value to write, or raises Invalid with the reason -------------


class Invalid(ValueError):
    """A value that is not valid for its attribute; the message says why, without the value."""


# C0 and C1 control characters (C1 comes from bytes decoded in the wrong character set).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # ST/LT allow TAB LF FF CR
_MAX_CHARACTERS = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "CS": 16, "AS": 4, "DS": 16}


def _single(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        if len(value) != 1:
            raise Invalid("more than one value")
        return value[0]
    return value


def _text(vr: str) -> Callable[[Any, str], str]:
    """SH, LO, ST, LT: one value, no control characters, no more bytes than the VR allows."""
    control = _TEXT_CONTROL if vr in ("ST", "LT") else _CONTROL

    def check(value: Any, codec: str) -> str:
        text = _decoded(_windows_1252(str(_single(value)).strip(" \x00")))
        if control.search(text):
            raise Invalid("control characters")
        if vr in ("SH", "LO") and "\\" in text:
            raise Invalid("a backslash in a single value")
        if _length(text, codec) > _MAX_CHARACTERS[vr]:
            raise Invalid(f"longer than {vr} allows")
        return text

    return check


def _texts(vr: str) -> Callable[[Any, str], list[str]]:
    """Multi-valued SH/LO (e.g. SoftwareVersions): every value must pass."""
    one = _text(vr)

    def check(value: Any, codec: str) -> list[str]:
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        return [one(v, codec) for v in values]

    return check


def _length(text: str, codec: str) -> int:
    """The length the VR limits apply to, as dciodvfy counts it: bytes in the character set the
    results are written in (never less than the number of characters)."""
    try:
        return len(text.encode(codec))
    except UnicodeEncodeError:
        return len(text.encode("utf-8"))  # the copy is then written in UTF-8 (clean_source)


_C1 = re.compile(r"[\x80-\x9f]")
_CP1252 = {
    chr(byte): bytes([byte]).decode("cp1252")
    for byte in range(0x80, 0xA0)
    if byte not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)  # undefined in Windows-1252
}


def _windows_1252(text: str) -> str:
    """Text whose bytes were Windows-1252 but declared ISO 8859-1 (common in the field) decodes
    with C1 control characters where Windows-1252 has printable ones (e.g. the euro sign, OE
    ligature, curly quotes): those are restored; C1 bytes Windows-1252 does not define stay (and
    are refused as control characters)."""
    if not _C1.search(text):
        return text
    return "".join(_CP1252.get(char, char) for char in text)


def _decoded(text: str) -> str:
    """Text pydicom could not decode in the declared character set has replacement characters
    (U+FFFD) where the source had bytes: it is not the source's value, so it is not copied."""
    if "\ufffd" in text:
        raise Invalid("not decodable in the declared character set")
    return text


def _person_name(value: Any, codec: str) -> str:
    """PN: at most three component groups of at most five components, 64 bytes each."""
    text = _decoded(_windows_1252(str(_single(value)).strip(" \x00")))
    if _CONTROL.search(text):
        raise Invalid("control characters")
    if "\\" in text:
        raise Invalid("a backslash in a single value")
    groups = text.split("=")
    if len(groups) > 3:
        raise Invalid("more than three component groups")
    for group in groups:
        if _length(group, codec) > 64:
            raise Invalid("a component group longer than 64 bytes")
        if group.count("^") > 4:
            raise Invalid("more than five components")
    return text


def _regex_vr(vr: str, *, allowed: Iterable[str] = ()) -> Callable[[Any, str], str]:
    """A VR pydicom checks with its PS3.5 pattern (CS, AS, DS, UI), optionally defined terms."""
    terms = frozenset(allowed)

    def check(value: Any, _codec: str) -> str:
        text = str(_single(value)).strip(" \x00")
        _pydicom_check(vr, text)
        if terms and text not in terms:
            raise Invalid("not one of the defined terms")
        return text

    return check


def uid(value: Any, _codec: str = "ascii") -> str:
    """UI (PS3.5 9.1): digits and dots, at most 64, at least two components, not all zero."""
    text = str(_single(value)).strip(" \x00")
    _pydicom_check("UI", text)
    components = text.split(".")
    if len(components) < 2 or all(c == "0" for c in components):
        raise Invalid("not a usable UID")
    return text


def _pydicom_check(vr: str, text: str) -> None:
    try:
        validate_value(vr, text, config.RAISE)
    except ValueError:
        raise Invalid(f"not a valid {vr}") from None


_DATE_FORMS = re.compile(r"^(\d{4})[-/.](\d{2})[-/.](\d{2})$")
_TIME_FORMS = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?$")


def date(value: Any, _codec: str = "ascii") -> str:
    """DA ``YYYYMMDD`` of a real calendar date in the years 1000 to 2999; year-first forms with
    separators are normalised. Day-first and month-first forms (``01/02/2020``) are ambiguous and
    refused."""
    text = str(_single(value)).strip(" \x00")
    match = _DATE_FORMS.match(text)
    if match:
        text = "".join(match.groups())
    if not re.fullmatch(r"\d{8}", text):
        raise Invalid("not a date")
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise Invalid("not a calendar date") from None
    if not "1000" <= text[:4] <= "2999":  # the years dicom3tools' dciodvfy accepts
        raise Invalid("a year out of range")
    return text


_TIME = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$")


def time(value: Any, _codec: str = "ascii") -> str:
    """TM ``HH[MM[SS[.F]]]`` (PS3.5 6.2), one time: ranges (``0900-1000``, a query form) and
    leap seconds (``60``, refused by dciodvfy) are not copied; ACR-NEMA ``HH:MM:SS`` is
    normalised."""
    text = str(_single(value)).strip(" \x00")
    match = _TIME_FORMS.match(text)
    if match:
        text = "".join(part or "" for part in match.groups())
    if not _TIME.match(text):
        raise Invalid("not a time")
    return text


def patient_sex(value: Any, _codec: str = "ascii") -> str:
    """PatientSex: M, F or O (PS3.3 C.7.1.1); case is normalised, other values are unknown."""
    text = str(_single(value)).strip(" \x00").upper()
    if text not in ("M", "F", "O"):
        raise Invalid("not M, F or O")
    return text


_AXES = ("AP", "RL", "HF")


def _pair(value: Any) -> list[str]:
    """The two values of a VM 2 attribute, stripped; Invalid for any other number."""
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if len(values) != 2:
        raise Invalid("not two values")
    return [str(item).strip(" \x00") for item in values]


def patient_orientation(value: Any, _codec: str = "ascii") -> list[str]:
    """PatientOrientation: two values, each one to three of A P R L H F, one per axis, the row's
    and the column's first letters on different axes (C.7.6.1.1.1)."""
    result = []
    for text in _pair(value):
        if not re.fullmatch(r"[APRLHF]{1,3}", text) or any(
            sum(letter in axis for letter in text) > 1 for axis in _AXES
        ):
            raise Invalid("not a biped orientation")
        result.append(text)
    if _axis(result[0][0]) == _axis(result[1][0]):
        raise Invalid("row and column along the same axis")
    return result


def _axis(letter: str) -> str:
    return next(axis for axis in _AXES if letter in axis)


def pixel_spacing(value: Any, _codec: str = "ascii") -> list[str]:
    """ImagerPixelSpacing: two positive, finite DS values (mm); a decimal comma is not guessed at."""
    result = []
    for text in _pair(value):
        _pydicom_check("DS", text)
        number = float(text)
        if not (0 < number < float("inf")):
            raise Invalid("not a positive spacing")
        result.append(text)
    return result


@dataclass(frozen=True)
class Copied:
    keyword: str
    type: str  # "2": left empty when invalid; "3": left out
    check: Callable[[Any, str], Any]  # (value, Python codec of the results) -> value to write


# What the results copy, with the Type the attribute has in the result IODs (PS3.3 C.7.1.1 Patient,
# C.7.2.1 General Study, C.7.2.2 Patient Study, C.7.5.1 General Equipment as Contributing Equipment,
# C.7.3.1 General Series, C.7.6.1 General Image, C.8.8.4 / TID 1603 image library descriptors).
COPIED: tuple[Copied, ...] = (
    Copied("PatientName", "2", _person_name),
    Copied("PatientID", "2", _text("LO")),
    Copied("IssuerOfPatientID", "3", _text("LO")),
    Copied("PatientBirthDate", "2", date),
    Copied("PatientSex", "2", patient_sex),
    Copied("PatientAge", "3", _regex_vr("AS")),
    Copied("StudyDate", "2", date),
    Copied("StudyTime", "2", time),
    Copied("ReferringPhysicianName", "2", _person_name),
    Copied("StudyID", "2", _text("SH")),
    Copied("AccessionNumber", "2", _text("SH")),
    Copied("StudyDescription", "3", _text("LO")),
    Copied("Manufacturer", "3", _text("LO")),
    Copied("ManufacturerModelName", "3", _text("LO")),
    Copied("DeviceSerialNumber", "3", _text("LO")),
    Copied("SoftwareVersions", "3", _texts("LO")),
    Copied("InstitutionName", "3", _text("LO")),
    Copied("InstitutionalDepartmentName", "3", _text("LO")),
    Copied("InstitutionAddress", "3", _text("ST")),
    Copied("StationName", "3", _text("SH")),
    Copied("AcquisitionDate", "3", date),
    Copied("AcquisitionTime", "3", time),
    Copied("BodyPartExamined", "3", _regex_vr("CS")),
    Copied("Laterality", "3", _regex_vr("CS", allowed=("L", "R"))),
    Copied("ImageLaterality", "3", _regex_vr("CS", allowed=("L", "R", "U", "B"))),
    Copied("PatientOrientation", "3", patient_orientation),
    Copied("ImagerPixelSpacing", "3", pixel_spacing),
    Copied("FrameOfReferenceUID", "3", uid),
)
COPIED_KEYWORDS = tuple(item.keyword for item in COPIED)
# Identifiers the SCP validated at ingest, and the image geometry the decoder validated.
_TRUSTED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_GEOMETRY = ("Rows", "Columns")


def clean_source(source: Dataset) -> tuple[Dataset, list[HeaderChange]]:
    """A header-only copy of ``source`` that highdicom accepts and dciodvfy passes.

    Returns the copy (identifiers, Modality, geometry and the `COPIED` attributes, each valid,
    normalised, empty or absent, in the source's own character set when that is a single
    non-ISO-2022 one that holds every copied string, else in ISO_IR 192 when any is not ASCII)
    and the changes made. Raises ValueError when an identifier or the image geometry is missing
    (the SCP and the decoder rule that out for images they accept)."""
    declared = _single_character_set(source)
    if declared is not None:
        clean, changes = _clean(source, python_encoding[declared])
        if _encodes(clean, python_encoding[declared]):
            if not _all_ascii(clean):
                clean.SpecificCharacterSet = declared
            return clean, changes
    clean, changes = _clean(source, "utf-8")
    if not _all_ascii(clean):
        clean.SpecificCharacterSet = RESULT_CHARACTER_SET
    return clean, changes


# Single character sets the results can be written in as the source declared them (highdicom's
# SpecificCharacterSetValues without code extensions); any other declaration gives ISO_IR 192.
_KEPT_CHARACTER_SETS = frozenset(
    {
        "ISO_IR 100",
        "ISO_IR 101",
        "ISO_IR 109",
        "ISO_IR 110",
        "ISO_IR 144",
        "ISO_IR 127",
        "ISO_IR 126",
        "ISO_IR 138",
        "ISO_IR 148",
        "ISO_IR 166",
        "ISO_IR 192",
        "GB18030",
        "GBK",
    }
)


def _single_character_set(source: Dataset) -> str | None:
    try:
        value = source.get("SpecificCharacterSet")
    except Exception:
        return None
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    term = values[0].strip()
    return term if term in _KEPT_CHARACTER_SETS else None


def _clean(source: Dataset, codec: str) -> tuple[Dataset, list[HeaderChange]]:
    clean = Dataset()
    for keyword in (*_TRUSTED, *_GEOMETRY):
        value = source.get(keyword)
        if value is None:
            raise ValueError(f"the source image has no {keyword}")
        setattr(clean, keyword, value)
    changes: list[HeaderChange] = []
    clean.Modality = _modality(source, changes)
    for item in COPIED:
        _copy(source, clean, item, changes, codec)
    if _unknown_character_set(source):
        changes.append(
            HeaderChange(
                "SpecificCharacterSet",
                Action.NORMALISED,
                "a term pydicom does not know; text copied as decoded",
            )
        )
    return clean, changes


def _strings(clean: Dataset) -> list[str]:
    found: list[str] = []
    for element in clean:
        values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
        found.extend(str(v) for v in values if isinstance(v, str) or element.VR == "PN")
    return found


def _encodes(clean: Dataset, codec: str) -> bool:
    try:
        for text in _strings(clean):
            text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _all_ascii(clean: Dataset) -> bool:
    return all(text.isascii() for text in _strings(clean))


def _modality(source: Dataset, changes: list[HeaderChange]) -> str:
    expected = "CR" if str(source.SOPClassUID) == CR_SOP_CLASS else "DX"
    try:
        given = str(_single(source.get("Modality", ""))).strip()
    except Exception:
        given = ""
    if given != expected:
        why = "missing" if not given else f"not {expected}"
        changes.append(HeaderChange("Modality", Action.DERIVED, f"{why}; from the SOP class"))
    return expected


def _copy(
    source: Dataset, clean: Dataset, item: Copied, changes: list[HeaderChange], codec: str
) -> None:
    try:
        if item.keyword not in source:
            if item.type == "2":
                setattr(clean, item.keyword, "")
            return
        value = source[item.keyword].value  # converts the raw bytes: may raise
        if value is None or value == "":
            if item.type == "2":
                setattr(clean, item.keyword, "")
            return
        written = item.check(value, codec)
    except Exception as exc:  # Invalid, or a value pydicom cannot even convert: never fatal
        why = str(exc) if isinstance(exc, Invalid) else f"unreadable ({exc.__class__.__name__})"
        changes.append(
            HeaderChange(item.keyword, Action.EMPTIED if item.type == "2" else Action.DROPPED, why)
        )
        if item.type == "2":
            setattr(clean, item.keyword, "")
        return
    if written != _as_written(value, multiple=isinstance(written, list)):
        changes.append(HeaderChange(item.keyword, Action.NORMALISED, "non-standard form"))
    setattr(clean, item.keyword, written)


def _as_written(value: Any, *, multiple: bool) -> Any:
    """The source value in the form the checks return, to tell a normalisation from a copy."""
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    stripped = [str(v).strip(" \x00") for v in values]
    return stripped if multiple or len(stripped) != 1 else stripped[0]


def _unknown_character_set(source: Dataset) -> bool:
    """Whether the source declares a character set term that pydicom cannot map to a codec
    (it then decodes with its default and warns); empty first values are valid (PS3.3 C.12.1.1.2)."""
    try:
        value = source.get("SpecificCharacterSet")
    except Exception:
        return True
    if value is None:
        return False
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return any(str(v).strip() and str(v).strip() not in python_encoding for v in values)


def summarise(changes_per_image: Iterable[Iterable[HeaderChange]]) -> str | None:
    """One line for the study's history: each distinct change with the number of images it
    concerns, e.g. ``PatientBirthDate left empty (not a date) in 3 images``; None without changes."""
    counts: dict[HeaderChange, int] = {}
    for changes in changes_per_image:
        for change in dict.fromkeys(changes):
            counts[change] = counts.get(change, 0) + 1
    if not counts:
        return None
    return "; ".join(
        f"{change} in {n} image{'s' if n != 1 else ''}" for change, n in counts.items()
    )
