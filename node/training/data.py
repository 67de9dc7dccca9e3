"""MURA-layout data: CSV splits (no header rows), study labels, loss weights, a torch Dataset.

Layout (MURA-v1.1): ``{split}_image_paths.csv`` lists image paths, one per line, no header;
``{split}_labeled_studies.csv`` lists ``study_folder/,label`` lines, no header. Paths look like
``MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png``; ``positive`` means abnormal.
Both files are read with the csv module line by line, so the first line is never taken for a
header. A split can also be any CSV of image paths of the same shape (own data).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from node.errors import UsageError
from node.inference.imaging import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_SIZE,
    png_to_unit,
    unit_to_tensor,
)
from node.profiles import MURA_STUDY_TYPES

_TYPE = re.compile(r"XR_([A-Z]+)")
_STUDY = re.compile(r"(study\d+_(positive|negative))")


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    study: str  # the study folder, as written in the CSV (relative)
    study_type: str
    label: int  # 1 abnormal, 0 normal


def parse_image_path(text: str) -> tuple[str, str, int]:
    """Study folder, study type and label of a MURA image path."""
    kind = _TYPE.search(text)
    study = _STUDY.search(text)
    if kind is None or study is None or kind.group(1).lower() not in MURA_STUDY_TYPES:
        raise ValueError(
            f"not a MURA image path (XR_<TYPE>/.../studyN_positive|negative/...): {text!r}"
        )
    folder = text[: study.end()] + "/"
    return folder, kind.group(1).lower(), 1 if study.group(2) == "positive" else 0


def read_split(csv_path: Path, root: Path | None = None) -> list[ImageRecord]:
    """Images of a split CSV; paths are resolved against ``root`` (default: the CSV's parent's parent,
    which is where MURA's paths start)."""
    root = root if root is not None else csv_path.resolve().parent.parent
    records = []
    with csv_path.open(newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if not row or not row[0].strip():
                continue
            try:
                study, study_type, label = parse_image_path(row[0].strip())
            except ValueError as exc:
                raise UsageError(f"{csv_path}:{line_number}: {exc}") from None
            records.append(ImageRecord(root / row[0].strip(), study, study_type, label))
    if not records:
        raise UsageError(f"{csv_path}: no images")
    return records


def read_study_labels(csv_path: Path) -> dict[str, int]:
    """``study_folder/ -> label`` from a labeled-studies CSV (no header)."""
    labels = {}
    with csv_path.open(newline="") as handle:
        for row in csv.reader(handle):
            if len(row) >= 2 and row[0].strip():
                labels[row[0].strip()] = int(row[1])
    return labels


def loss_weights(records: Sequence[ImageRecord]) -> dict[str, tuple[float, float]]:
    """Per study type T: (weight of positives, weight of negatives) = (N_T, A_T) / (A_T + N_T),
    with A_T and N_T the abnormal and normal IMAGE counts of T in the training set."""
    abnormal = Counter(r.study_type for r in records if r.label == 1)
    normal = Counter(r.study_type for r in records if r.label == 0)
    weights = {}
    for study_type in sorted(set(abnormal) | set(normal)):
        a, n = abnormal[study_type], normal[study_type]
        weights[study_type] = (n / (a + n), a / (a + n))
    return weights


class MuraImages(Dataset[tuple[torch.Tensor, int, int]]):
    """(input tensor, label, index) per image; with ``augment``, the paper's random lateral
    inversion and rotation up to 30 degrees."""

    def __init__(
        self, records: Sequence[ImageRecord], size: int = INPUT_SIZE, augment: bool = False
    ) -> None:
        self.records = list(records)
        self.size = size
        self.augment = augment
        self.black = torch.tensor(
            [(0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        record = self.records[index]
        tensor = unit_to_tensor(png_to_unit(record.path), self.size)
        if self.augment:
            tensor = self._augment(tensor)
        return tensor, record.label, index

    def _augment(self, tensor: torch.Tensor) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF

        if torch.rand(()) < 0.5:
            tensor = TF.horizontal_flip(tensor)
        angle = float(torch.empty(()).uniform_(-30, 30))
        return TF.rotate(tensor, angle, fill=self.black.tolist())
