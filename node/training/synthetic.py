"""A small synthetic data set in MURA's layout, with a visual signal planted in abnormal studies.

For tests and for trying `mura-node train` / `evaluate` without MURA: PNG images of a noisy
"bone" on a dark background; images of abnormal (``positive``) studies carry a bright round
lesion at a random place. CSV files are written without header rows, as MURA's are.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from node.profiles import MURA_STUDY_TYPES


def _image(rng: np.random.Generator, size: int, abnormal: bool) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    image = rng.normal(40, 12, (size, size)).astype(np.float32)
    centre = size / 2 + rng.uniform(-size / 8, size / 8)
    image[np.abs(x - centre) < size / 10] += 110  # the bone
    if abnormal:
        cy, cx = rng.uniform(size * 0.2, size * 0.8, 2)
        image[(x - cx) ** 2 + (y - cy) ** 2 < (size / 9) ** 2] = 250  # the lesion
    return np.clip(image, 0, 255).astype(np.uint8)


def make_dataset(
    root: Path, studies_per_type: int = 4, images_per_study: int = 2, size: int = 64, seed: int = 0
) -> Path:
    """Write ``root/MURA-v1.1`` with train and valid splits; return that folder."""
    rng = np.random.default_rng(seed)
    base = root / "MURA-v1.1"
    for split, count in (("train", studies_per_type), ("valid", max(2, studies_per_type // 2))):
        image_rows, study_rows = [], []
        for type_index, study_type in enumerate(MURA_STUDY_TYPES):
            for study in range(count):
                abnormal = study % 2 == 0
                patient = (
                    f"patient{type_index * 1000 + study + (0 if split == 'train' else 500):05d}"
                )
                folder = f"MURA-v1.1/{split}/XR_{study_type.upper()}/{patient}/study1_{'positive' if abnormal else 'negative'}/"
                study_rows.append([folder, int(abnormal)])
                for number in range(1, images_per_study + 1):
                    path = root / folder / f"image{number}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(_image(rng, size, abnormal)).save(path)
                    image_rows.append([f"{folder}image{number}.png"])
        for name, rows in (
            (f"{split}_image_paths.csv", image_rows),
            (f"{split}_labeled_studies.csv", study_rows),
        ):
            with (base / name).open("w", newline="") as handle:
                csv.writer(handle).writerows(rows)
    return base
