"""The attributes results copy from their source images, cleaned so that a header never costs a result.

The SR and the heatmap SCs file themselves with the source's patient and study, name the source's
acquisition equipment (Contributing Equipment) and describe each source image (image library,
laterality, orientation). Hospitals send values that pydicom reads, with warnings, but that are not
valid for their VR: dates such as ``00/00/0000``, ACR-NEMA times ``09:15:00``, PatientSex ``U``,
decimal commas, ISO 2022 character sets that highdicom does not accept, missing Type 1 attributes.
highdicom validates everything it writes, so the writers never see the source itself: they get the
clean copy made here (`clean_source`), attribute by attribute (PS3.3 module tables; Type as in the
result IODs):

- valid as it is (pydicom's VR checks, PS3.5 6.2, plus the attribute's defined terms; the checks
  per VR are in node/results/value_checks.py): copied;
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

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from node.results.value_checks import (
    Invalid,
    date,
    patient_orientation,
    patient_sex,
    person_name,
    pixel_spacing,
    single_value,
    text_value,
    text_values,
    time,
    uid,
    vr_value,
)

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


@dataclass(frozen=True)
class Copied:
    keyword: str
    type: str  # "2": left empty when invalid; "3": left out
    check: Callable[[Any, str], Any]  # (value, Python codec of the results) -> value to write


# What the results copy, with the Type the attribute has in the result IODs (PS3.3 C.7.1.1 Patient,
# C.7.2.1 General Study, C.7.2.2 Patient Study, C.7.5.1 General Equipment as Contributing Equipment,
# C.7.3.1 General Series, C.7.6.1 General Image, C.8.8.4 / TID 1603 image library descriptors).
COPIED: tuple[Copied, ...] = (
    Copied("PatientName", "2", person_name),
    Copied("PatientID", "2", text_value("LO")),
    Copied("IssuerOfPatientID", "3", text_value("LO")),
    Copied("PatientBirthDate", "2", date),
    Copied("PatientSex", "2", patient_sex),
    Copied("PatientAge", "3", vr_value("AS")),
    Copied("StudyDate", "2", date),
    Copied("StudyTime", "2", time),
    Copied("ReferringPhysicianName", "2", person_name),
    Copied("StudyID", "2", text_value("SH")),
    Copied("AccessionNumber", "2", text_value("SH")),
    Copied("StudyDescription", "3", text_value("LO")),
    Copied("Manufacturer", "3", text_value("LO")),
    Copied("ManufacturerModelName", "3", text_value("LO")),
    Copied("DeviceSerialNumber", "3", text_value("LO")),
    Copied("SoftwareVersions", "3", text_values("LO")),
    Copied("InstitutionName", "3", text_value("LO")),
    Copied("InstitutionalDepartmentName", "3", text_value("LO")),
    Copied("InstitutionAddress", "3", text_value("ST")),
    Copied("StationName", "3", text_value("SH")),
    Copied("AcquisitionDate", "3", date),
    Copied("AcquisitionTime", "3", time),
    Copied("BodyPartExamined", "3", vr_value("CS")),
    Copied("Laterality", "3", vr_value("CS", allowed=("L", "R"))),
    Copied("ImageLaterality", "3", vr_value("CS", allowed=("L", "R", "U", "B"))),
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
        given = str(single_value(source.get("Modality", ""))).strip()
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
