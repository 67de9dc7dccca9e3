"""The synthetic corpus: per sender, its studies of radiographs written to disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"


@dataclass
class Study:
    uid: str
    sender: int
    files: list[str]
    sop_uids: list[str]


def make_corpus(
    directory: Path, senders: int, instances: int, per_study: int, size: int
) -> list[list[Study]]:
    """Per sender, its studies: CR and DX in turn, WRIST and HAND in turn, ``size`` x ``size``
    16-bit (12 stored) pixels."""
    from pydicom.uid import generate_uid

    from tests.support.factory import make_radiograph, write

    corpus: list[list[Study]] = []
    number = 0
    for sender in range(senders):
        studies: list[Study] = []
        left = instances
        while left > 0:
            count = min(per_study, left)
            left -= count
            uid = generate_uid()
            folder = directory / f"sender{sender}" / f"study{len(studies):04d}"
            folder.mkdir(parents=True)
            study = Study(uid, sender, [], [])
            for index in range(count):
                ds = make_radiograph(
                    study_uid=uid,
                    sop_class=CR if number % 2 == 0 else DX_PRESENTATION,
                    body_part="WRIST" if number % 4 < 2 else "HAND",
                    rows=size,
                    columns=size,
                    seed=number * 31 + index,
                )
                ds.InstanceNumber = index + 1
                study.files.append(str(write(ds, folder / f"{index:03d}.dcm")))
                study.sop_uids.append(str(ds.SOPInstanceUID))
            studies.append(study)
            number += 1
        corpus.append(studies)
    return corpus
