"""Per-VR value checks of the attributes results copy from their sources (node/results/sanitise.py).

Each check takes the value pydicom read and the Python codec the results are written in, and
returns the value to write (valid for its VR, PS3.5 6.2, and for the attribute's defined terms),
normalising one unambiguous meaning in a common non-standard form (dates ``YYYY-MM-DD``,
``YYYY/MM/DD``, ``YYYY.MM.DD``; ACR-NEMA times ``HH:MM[:SS[.F]]``; PatientSex in lower case), or
raises `Invalid` with the reason, never the value.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable
from typing import Any

from pydicom import config
from pydicom.multival import MultiValue
from pydicom.valuerep import validate_value


class Invalid(ValueError):
    """A value that is not valid for its attribute; the message says why, without the value."""


# C0 and C1 control characters (C1 comes from bytes decoded in the wrong character set).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # ST/LT allow TAB LF FF CR
_MAX_CHARACTERS = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "CS": 16, "AS": 4, "DS": 16}


def single_value(value: Any) -> Any:
    """The one value of a possibly multi-valued element; raises Invalid for more than one."""
    if isinstance(value, MultiValue | list | tuple):
        if len(value) != 1:
            raise Invalid("more than one value")
        return value[0]
    return value


def text_value(vr: str) -> Callable[[Any, str], str]:
    """SH, LO, ST, LT: one value, no control characters, no more bytes than the VR allows."""
    control = _TEXT_CONTROL if vr in ("ST", "LT") else _CONTROL

    def check(value: Any, codec: str) -> str:
        text = _decoded(_windows_1252(str(single_value(value)).strip(" \x00")))
        if control.search(text):
            raise Invalid("control characters")
        if vr in ("SH", "LO") and "\\" in text:
            raise Invalid("a backslash in a single value")
        if _length(text, codec) > _MAX_CHARACTERS[vr]:
            raise Invalid(f"longer than {vr} allows")
        return text

    return check


def text_values(vr: str) -> Callable[[Any, str], list[str]]:
    """Multi-valued SH/LO (e.g. SoftwareVersions): every value must pass."""
    one = text_value(vr)

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


def person_name(value: Any, codec: str) -> str:
    """PN: at most three component groups of at most five components, 64 bytes each."""
    text = _decoded(_windows_1252(str(single_value(value)).strip(" \x00")))
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


def vr_value(vr: str, *, allowed: Iterable[str] = ()) -> Callable[[Any, str], str]:
    """A VR pydicom checks with its PS3.5 pattern (CS, AS, DS, UI), optionally defined terms."""
    terms = frozenset(allowed)

    def check(value: Any, _codec: str) -> str:
        text = str(single_value(value)).strip(" \x00")
        _pydicom_check(vr, text)
        if terms and text not in terms:
            raise Invalid("not one of the defined terms")
        return text

    return check


def uid(value: Any, _codec: str = "ascii") -> str:
    """UI (PS3.5 9.1): digits and dots, at most 64, at least two components, not all zero."""
    text = str(single_value(value)).strip(" \x00")
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
    text = str(single_value(value)).strip(" \x00")
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
    text = str(single_value(value)).strip(" \x00")
    match = _TIME_FORMS.match(text)
    if match:
        text = "".join(part or "" for part in match.groups())
    if not _TIME.match(text):
        raise Invalid("not a time")
    return text


def patient_sex(value: Any, _codec: str = "ascii") -> str:
    """PatientSex: M, F or O (PS3.3 C.7.1.1); case is normalised, other values are unknown."""
    text = str(single_value(value)).strip(" \x00").upper()
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
