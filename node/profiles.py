"""Readers for the data in dicom_profiles/: what the SCP accepts and the body-part vocabulary.

The files are data so that a site can review and change them without reading code; this module
only parses and checks them.
"""

from __future__ import annotations

import enum
import tomllib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydicom.uid import UID

from node.errors import ProfileError

STORAGE_FILE = "storage.toml"
VOCABULARY_FILE = "study_types.toml"
MURA_STUDY_TYPES = ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist")


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
class Vocabulary:
    """Terms that name a MURA study type, or a body part outside the upper extremity."""

    fields: tuple[str, ...]
    study_types: dict[str, tuple[str, ...]]
    not_upper_extremity: tuple[str, ...]


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
    data = _read(directory, VOCABULARY_FILE)
    types = data.get("study_type", {})
    unknown = sorted(set(types) - set(MURA_STUDY_TYPES))
    if unknown:
        raise ProfileError(f"{VOCABULARY_FILE}: unknown study type(s) {', '.join(unknown)}")
    missing = sorted(set(MURA_STUDY_TYPES) - set(types))
    if missing:
        raise ProfileError(f"{VOCABULARY_FILE}: no terms for study type(s) {', '.join(missing)}")
    fields = _terms("fields", data.get("fields"))
    return Vocabulary(
        fields=fields,
        study_types={
            name: _terms(f"study_type.{name}.terms", types[name].get("terms"))
            for name in MURA_STUDY_TYPES
        },
        not_upper_extremity=_terms(
            "not_upper_extremity.terms", data.get("not_upper_extremity", {}).get("terms", [])
        ),
    )
