"""Who wrote a result (the node as a device observer, the algorithm that decided), and the study-level
attributes every result object carries."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset

from node import __version__

MANUFACTURER = "mura-node project"
MODEL_NAME = "mura-node"


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


# Patient and study attributes viewers show (study lists, overlays) that the cleaned source may
# carry (node/results/sanitise.py COPIED) and highdicom's SC does not copy: copied when present.
STUDY_LEVEL = ("IssuerOfPatientID", "PatientAge", "StudyDescription")


def add_study_level(result: Dataset, source: Dataset, created: datetime) -> None:
    """Give a result object what viewers file and label it with.

    ``source`` is the cleaned source header (`node.results.sanitise.clean_source`: what it has is
    valid); each of `STUDY_LEVEL` it has and ``result`` lacks is copied. SeriesDate and SeriesTime
    (General Series, Type 3) are ``created``, the moment the result series was made, in the
    node's local time as DICOM dates and times are."""
    for keyword in STUDY_LEVEL:
        if keyword in source and keyword not in result and source[keyword].value not in ("", None):
            result[keyword] = deepcopy(source[keyword])
    local = created.astimezone() if created.tzinfo is not None else created
    result.SeriesDate = local.strftime("%Y%m%d")
    result.SeriesTime = local.strftime("%H%M%S")
