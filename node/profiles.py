"""Readers for the data in dicom_profiles/: what the SCP accepts, the body-part vocabulary and
the anatomy codes.

The files are data so that a site can review and change them without reading code; this module
only parses and checks them.
"""

from __future__ import annotations

import enum
import re
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydicom.uid import UID

from node.errors import ProfileError

STORAGE_FILE = "storage.toml"
VOCABULARY_FILE = "study_types.toml"
ANATOMY_FILE = "anatomy.toml"
MURA_STUDY_TYPES = ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist")
CODED_FIELD = "AnatomicRegionSequence"
TEXT_FIELDS = ("BodyPartExamined", "ProtocolName", "SeriesDescription", "StudyDescription")
SNOMED_CT, SNOMED_RT = "SCT", "SRT"
_SCT_ID = re.compile(r"^[1-9][0-9]{5,17}$")
_SRT_CODE = re.compile(r"^[A-Z]-[0-9A-Z]{4,6}$")

MAX_CODED_REGION = 64  # characters of "SCHEME:CODE" (instances.anatomic_region)
_SCHEME = re.compile(r"[\x21-\x39\x3B-\x5B\x5D-\x7E]+")  # printable ASCII, no space, ':' or '\\'
_CODE = re.compile(r"[\x21-\x5B\x5D-\x7E]+")  # printable ASCII, no space or '\\'


class Role(enum.StrEnum):
    ANALYSE = "analyse"
    IGNORE = "ignore"


@dataclass(frozen=True)
class StorageProfile:
    """SOP classes the SCP accepts, with their role, and the transfer syntaxes it accepts."""

    sop_classes: dict[str, Role]
    names: dict[str, str]
    transfer_syntaxes: tuple[str, ...]

    def role(self, sop_class_uid: str) -> Role | None:
        return self.sop_classes.get(sop_class_uid)

    @property
    def analysed(self) -> tuple[str, ...]:
        return tuple(uid for uid, role in self.sop_classes.items() if role is Role.ANALYSE)


@dataclass(frozen=True)
class AnatomicRegion:
    """What one code of anatomy.toml decides: a MURA study type, not upper extremity, or
    nothing (``study_type`` None and ``not_upper_extremity`` False)."""

    meaning: str
    study_type: str | None = None
    not_upper_extremity: bool = False


@dataclass(frozen=True)
class AnatomyCodes:
    """AnatomicRegionSequence codes (PS3.16 CID 4031 and Annex L) and what each decides.

    ``schemes`` maps a CodingSchemeDesignator (upper case) to "SCT" (SNOMED CT) or "SRT"
    (SNOMED-RT code values, also used by SNM3 and 99SDM); ``regions`` maps ("SCT" or "SRT",
    CodeValue) to the region."""

    schemes: dict[str, str] = field(default_factory=dict)
    regions: dict[tuple[str, str], AnatomicRegion] = field(default_factory=dict)

    def region(self, designator: str, code: str) -> AnatomicRegion | None:
        """The region a code names, or None for a code or a scheme the table does not list."""
        scheme = self.schemes.get(designator.upper())
        if scheme is None:
            return None
        return self.regions.get((scheme, code.upper() if scheme == "SRT" else code))


@dataclass(frozen=True)
class Vocabulary:
    """Terms that name a MURA study type, or a body part outside the upper extremity, and the
    fields (``CODED_FIELD`` and ``TEXT_FIELDS``, in the order they are read) they are looked for in."""

    fields: tuple[str, ...]
    study_types: dict[str, tuple[str, ...]]
    not_upper_extremity: tuple[str, ...]
    anatomy: AnatomyCodes = field(default_factory=AnatomyCodes)


def _read(directory: Path | None, name: str) -> dict[str, Any]:
    base: Traversable = directory if directory is not None else resources.files("dicom_profiles")
    path = base / name
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {path} is not valid TOML: {exc}") from None


def _check_uid(where: str, value: Any) -> str:
    if not isinstance(value, str) or not UID(value).is_valid:
        raise ProfileError(f"{where}: not a valid UID: {value!r}")
    return value


def load_storage_profile(directory: Path | None = None) -> StorageProfile:
    data = _read(directory, STORAGE_FILE)
    sop_classes: dict[str, Role] = {}
    names: dict[str, str] = {}
    for index, entry in enumerate(data.get("sop_class", [])):
        where = f"{STORAGE_FILE}: sop_class[{index}]"
        uid = _check_uid(f"{where}.uid", entry.get("uid"))
        try:
            sop_classes[uid] = Role(entry.get("role"))
        except ValueError:
            raise ProfileError(f"{where}.role: must be 'analyse' or 'ignore'") from None
        names[uid] = str(entry.get("name", uid))
    if not any(role is Role.ANALYSE for role in sop_classes.values()):
        raise ProfileError(f"{STORAGE_FILE}: no SOP class has role 'analyse'")
    syntaxes = tuple(
        _check_uid(f"{STORAGE_FILE}: transfer_syntax[{i}].uid", entry.get("uid"))
        for i, entry in enumerate(data.get("transfer_syntax", []))
    )
    if not syntaxes:
        raise ProfileError(f"{STORAGE_FILE}: no transfer_syntax listed")
    if data.get("accept_other_storage", False):
        from pynetdicom import AllStoragePresentationContexts

        for context in AllStoragePresentationContexts:
            uid = str(context.abstract_syntax)
            if uid not in sop_classes:
                sop_classes[uid] = Role.IGNORE
                names[uid] = UID(uid).name
    return StorageProfile(sop_classes=sop_classes, names=names, transfer_syntaxes=syntaxes)


def _terms(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
        raise ProfileError(f"{VOCABULARY_FILE}: {where}: expected a list of non-empty strings")
    return tuple(value)


def load_vocabulary(directory: Path | None = None) -> Vocabulary:
    """study_types.toml and anatomy.toml; raise ProfileError naming the entry that is wrong."""
    data = _read(directory, VOCABULARY_FILE)
    types = data.get("study_type", {})
    unknown = sorted(set(types) - set(MURA_STUDY_TYPES))
    if unknown:
        raise ProfileError(f"{VOCABULARY_FILE}: unknown study type(s) {', '.join(unknown)}")
    missing = sorted(set(MURA_STUDY_TYPES) - set(types))
    if missing:
        raise ProfileError(f"{VOCABULARY_FILE}: no terms for study type(s) {', '.join(missing)}")
    fields = _terms("fields", data.get("fields"))
    unknown = sorted(set(fields) - {CODED_FIELD, *TEXT_FIELDS})
    if unknown or len(set(fields)) != len(fields):
        raise ProfileError(
            f"{VOCABULARY_FILE}: fields: each of {CODED_FIELD}, {', '.join(TEXT_FIELDS)} at most "
            f"once (got {', '.join(fields)})"
        )
    return Vocabulary(
        fields=fields,
        study_types={
            name: _terms(f"study_type.{name}.terms", types[name].get("terms"))
            for name in MURA_STUDY_TYPES
        },
        not_upper_extremity=_terms(
            "not_upper_extremity.terms", data.get("not_upper_extremity", {}).get("terms", [])
        ),
        anatomy=load_anatomy(directory),
    )


def load_anatomy(directory: Path | None = None) -> AnatomyCodes:
    """anatomy.toml: the coding schemes and the codes with what each decides (see its header)."""
    data = _read(directory, ANATOMY_FILE)
    schemes: dict[str, str] = {}
    table = _anatomy_table("schemes", data.get("schemes"), (SNOMED_CT, SNOMED_RT))
    for scheme in (SNOMED_CT, SNOMED_RT):
        where = f"{ANATOMY_FILE}: schemes.{scheme}"
        for designator in _anatomy_list(where, table.get(scheme), str):
            if not designator.strip() or designator.upper() in schemes:
                raise ProfileError(f"{where}: {designator!r} is empty or listed twice")
            schemes[designator.upper()] = scheme
    types = _anatomy_table("study_type", data.get("study_type"), MURA_STUDY_TYPES)
    decisions = [(f"study_type.{name}", AnatomicRegion("", name)) for name in MURA_STUDY_TYPES]
    decisions.append(("no_study_type", AnatomicRegion("")))
    decisions.append(("not_upper_extremity", AnatomicRegion("", not_upper_extremity=True)))
    regions: dict[tuple[str, str], AnatomicRegion] = {}
    placed: dict[tuple[str, str], str] = {}
    for heading, decision in decisions:
        group, _, name = heading.partition(".")
        section = _anatomy_table(heading, types.get(name) if name else data.get(group), ("codes",))
        codes = _anatomy_list(f"{ANATOMY_FILE}: {heading}.codes", section.get("codes"), dict)
        for index, entry in enumerate(codes):
            where = f"{ANATOMY_FILE}: {heading}.codes[{index}]"
            meaning, keys = _anatomy_entry(where, entry)
            for key in keys:
                if key in placed:
                    raise ProfileError(f"{where}: {key[0]} {key[1]} is also in {placed[key]}")
                placed[key] = where
                regions[key] = replace(decision, meaning=meaning)
    return AnatomyCodes(schemes=schemes, regions=regions)


def _anatomy_table(where: str, value: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict) or not set(value) <= set(keys):
        raise ProfileError(f"{ANATOMY_FILE}: {where}: expected a table of {', '.join(keys)}")
    return value


def _anatomy_list(where: str, value: Any, kind: type) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(item, kind) for item in value):
        expected = "strings" if kind is str else "tables"
        raise ProfileError(f"{where}: expected a list of {expected}")
    return value


def _anatomy_entry(where: str, entry: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """An entry's meaning and its keys: ("SCT", concept ID) and, when given, ("SRT", code)."""
    extra = sorted(set(entry) - {SNOMED_CT, SNOMED_RT, "meaning"})
    if extra:
        raise ProfileError(f"{where}: unknown key(s) {', '.join(extra)}")
    sct, srt, meaning = entry.get(SNOMED_CT), entry.get(SNOMED_RT), entry.get("meaning")
    if not isinstance(sct, str) or not _SCT_ID.match(sct) or not _verhoeff_valid(sct):
        raise ProfileError(f"{where}.{SNOMED_CT}: not a SNOMED CT concept ID: {sct!r}")
    if srt is not None and (not isinstance(srt, str) or not _SRT_CODE.match(srt)):
        raise ProfileError(f"{where}.{SNOMED_RT}: not a SNOMED-RT code such as T-D8500: {srt!r}")
    if not isinstance(meaning, str) or not meaning.strip():
        raise ProfileError(f"{where}.meaning: expected a non-empty string")
    return meaning, [(SNOMED_CT, sct)] + ([(SNOMED_RT, srt)] if srt is not None else [])


# SNOMED CT identifiers end in a Verhoeff check digit: a mistyped digit or a swapped pair fails.
_VERHOEFF_D = (
    "0123456789", "1234067895", "2340178956", "3401289567", "4012395678",
    "5987604321", "6598710432", "7659821043", "8765932104", "9876543210",
)  # fmt: skip
_VERHOEFF_P = (
    "0123456789", "1576283094", "5803796142", "8916043527",
    "9453126870", "4286573901", "2793806415", "7046913258",
)  # fmt: skip


def _verhoeff_valid(number: str) -> bool:
    check = 0
    for position, digit in enumerate(reversed(number)):
        check = int(_VERHOEFF_D[check][int(_VERHOEFF_P[position % 8][int(digit)])])
    return check == 0


def coded_region(designator: object, code: object) -> str | None:
    """The stored form of a code, "SCHEME:CODE" (e.g. "SCT:14975008"), or None when either part
    is not a string, is empty, has a character outside printable ASCII (or ':' in the scheme, or a
    backslash), or the whole is longer than MAX_CODED_REGION."""
    if not isinstance(designator, str) or not isinstance(code, str):
        return None
    designator, code = designator.strip(), code.strip()
    if len(designator) + len(code) + 1 > MAX_CODED_REGION:
        return None
    if not _SCHEME.fullmatch(designator) or not _CODE.fullmatch(code):
        return None
    return f"{designator}:{code}"
