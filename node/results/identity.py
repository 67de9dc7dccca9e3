"""Who wrote a result: the node as a device observer, and the algorithm that decided."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from node import __version__

MANUFACTURER = "mura-node project"
MODEL_NAME = "mura-node"
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


@dataclass(frozen=True)
class NodeIdentity:
    device_uid: str
    ae_title: str
    manufacturer: str = MANUFACTURER
    model_name: str = MODEL_NAME
    software_version: str = __version__


@dataclass(frozen=True)
class AlgorithmInfo:
    name: str
    version: str
    checkpoints: tuple[str, ...]  # "name version sha256" per ensemble member
    untrained: bool

    @property
    def display_name(self) -> str:
        return f"{self.name} (UNTRAINED)" if self.untrained else self.name


def with_type2_attributes(source: Dataset) -> Dataset:
    """A header-only copy of a source image carrying every Type 2 patient and study attribute."""
    copy = Dataset()
    for element in source:
        if (
            element.tag.group >= 0x0008
            and element.keyword != "PixelData"
            and element.tag < 0x7FE00010
        ):
            copy.add(element)
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in copy:
            setattr(copy, keyword, "")
    return copy
