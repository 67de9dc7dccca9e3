"""A small synthetic data set in MURA's layout, with a subtle signal planted in abnormal studies.

For tests and for trying `mura-node train` / `evaluate` without MURA (`mura-node synth OUT`): 8-bit
PNG images of a noisy "bone" on a dark background. Images of truly abnormal studies carry a faint
round lesion (``LESION_CONTRAST`` grey levels above the image, against noise of standard deviation
``NOISE_SD``; radius ``size / 14``) at a random place; and a fixed share of each split's studies
(``label_noise``, 0.15 by default) is labelled the opposite of what its images show, as a reader
would sometimes. A model therefore learns the set well above chance but, on purpose, never
perfectly: kappa and AUROC of 1.0 on it mean a broken evaluation, not a good recipe.

Labels follow MURA: the study folder is ``studyN_positive`` (abnormal) or ``studyN_negative``; CSV
files are written without header rows, as MURA's are.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from node.profiles import MURA_STUDY_TYPES

NOISE_SD = 12.0  # grey levels (8-bit)
LESION_CONTRAST = 60.0  # grey levels added inside the lesion, 5 noise standard deviations


def _image(
    rng: np.random.Generator, size: int, lesion: bool, contrast: float, radius: float
) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    image = rng.normal(40, NOISE_SD, (size, size)).astype(np.float32)
    centre = size / 2 + rng.uniform(-size / 8, size / 8)
    image[np.abs(x - centre) < size / 10] += 110  # the bone
    if lesion:
        cy, cx = rng.uniform(size * 0.2, size * 0.8, 2)
        image[(x - cx) ** 2 + (y - cy) ** 2 < (size * radius) ** 2] += contrast
    return np.clip(image, 0, 255).astype(np.uint8)


def make_dataset(
    root: Path,
    studies_per_type: int = 4,
    images_per_study: int = 2,
    size: int = 64,
    seed: int = 0,
    label_noise: float = 0.15,
    lesion_contrast: float = LESION_CONTRAST,
    lesion_radius: float = 1 / 14,
) -> Path:
    """Write ``root/MURA-v1.1`` with a train split of ``studies_per_type`` studies per MURA study
    type and a valid split of half as many (at least 2); return that folder.

    Half the studies of each type show a lesion (``lesion_contrast`` grey levels, radius
    ``lesion_radius * size``); ``round(label_noise * studies)`` studies of each
    split, drawn with ``seed``, carry the opposite label. Raises ValueError for a count below 1, a
    ``size`` below 16 pixels or a ``label_noise`` outside [0, 0.5).
    """
    if studies_per_type < 1 or images_per_study < 1:
        raise ValueError("studies per type and images per study must be at least 1")
    if size < 16:
        raise ValueError(f"image size must be at least 16 pixels, not {size}")
    if not 0 <= label_noise < 0.5:
        raise ValueError(f"label noise must be in [0, 0.5), not {label_noise}")
    rng = np.random.default_rng(seed)
    base = root / "MURA-v1.1"
    for split, count in (("train", studies_per_type), ("valid", max(2, studies_per_type // 2))):
        total = count * len(MURA_STUDY_TYPES)
        flipped = set(rng.choice(total, round(label_noise * total), replace=False).tolist())
        image_rows, study_rows = [], []
        for type_index, study_type in enumerate(MURA_STUDY_TYPES):
            for study in range(count):
                lesion = study % 2 == 0
                abnormal = lesion != (type_index * count + study in flipped)
                patient = (
                    f"patient{type_index * 1000 + study + (0 if split == 'train' else 500):05d}"
                )
                folder = f"MURA-v1.1/{split}/XR_{study_type.upper()}/{patient}/study1_{'positive' if abnormal else 'negative'}/"
                study_rows.append([folder, int(abnormal)])
                for number in range(1, images_per_study + 1):
                    path = root / folder / f"image{number}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(_image(rng, size, lesion, lesion_contrast, lesion_radius)).save(
                        path
                    )
                    image_rows.append([f"{folder}image{number}.png"])
        for name, rows in (
            (f"{split}_image_paths.csv", image_rows),
            (f"{split}_labeled_studies.csv", study_rows),
        ):
            with (base / name).open("w", newline="") as handle:
                csv.writer(handle).writerows(rows)
    return base
