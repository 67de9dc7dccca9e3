"""Compressed radiographs and the parity of reduced against full decoding (tests and bench).

``smooth_radiograph`` draws a radiograph-like image (soft-tissue background, two bone-like
ellipses with a cortex, a fracture line, detector noise), unlike the factory's uniform noise, so
that low-pass decoding is judged on the kind of content it meets. ``parity`` runs the same
untrained DenseNet-169 (fixed seed, batch-norm statistics spread so its outputs differ from image
to image, as in bench/engine.py) on each file decoded in full and decoded at the reduced size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit

from node.inference.decoders import DecodeSize
from node.inference.engine import InferenceEngine
from node.inference.imaging import (
    INPUT_SIZE,
    dicom_to_unit,
    display_image,
    read_dicom,
    unit_to_tensor,
)
from node.inference.model import MuraDenseNet
from tests.support.factory import make_radiograph


def smooth_radiograph(rows: int, columns: int, bits_stored: int = 12, seed: int = 0) -> Dataset:
    """A MONOCHROME2 radiograph of ``rows`` x ``columns`` with ``bits_stored`` bits and no VOI
    attributes (so the node's percentile window applies)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    y, x = y / rows, x / columns
    top = (1 << bits_stored) - 1
    image = 0.15 + 0.1 * x + 0.05 * np.sin(6 * y + seed)
    for cx, tilt in ((0.4 + 0.05 * seed, 0.2), (0.62, -0.1)):
        u, v = (x - cx) + tilt * (y - 0.5), y - 0.5
        r = (u / 0.07) ** 2 + (v / 0.42) ** 2
        image += np.where(r < 1, 0.35 + 0.3 * np.clip(r - 0.7, 0, 1) / 0.3, 0.0)
    image[np.abs(y - 0.45 - 0.3 * (x - 0.4)) < 0.004] -= 0.2  # a fracture line
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    pixels = np.clip(image * top, 0, top).astype(np.uint8 if bits_stored <= 8 else np.uint16)
    ds = make_radiograph(rows=rows, columns=columns, bits_stored=bits_stored, seed=seed)
    ds.PixelData = pixels.tobytes()
    return ds


def as_jpeg2000(ds: Dataset, lossless: bool = True) -> Dataset:
    """``ds`` in JPEG 2000 (pylibjpeg-openjpeg): lossless (.90) or irreversible at 20:1 (.91)."""
    if lossless:
        ds.compress(JPEG2000Lossless)
    else:
        ds.compress(JPEG2000, compression_ratios=[20])
    return ds


def as_jpeg_baseline(ds: Dataset, quality: int = 90) -> Dataset:
    """``ds`` (8 bits stored) in JPEG baseline, encoded by Pillow's libjpeg."""
    buffer = io.BytesIO()
    Image.fromarray(ds.pixel_array).save(buffer, format="JPEG", quality=quality)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    return ds


@dataclass(frozen=True)
class Parity:
    """One image decoded in full and reduced: the model's probabilities, how far apart they
    are, the class activation maps' Pearson correlation, and the decoded sizes."""

    name: str
    full_probability: float
    reduced_probability: float
    cam_correlation: float
    full_shape: tuple[int, ...]
    reduced_shape: tuple[int, ...]
    display_difference: float  # mean |display_full - display_reduced| (0 to 1), same size only

    @property
    def probability_difference(self) -> float:
        return abs(self.full_probability - self.reduced_probability)


def seeded_model(seed: int) -> MuraDenseNet:
    """The untrained DenseNet-169 with random batch-norm statistics drawn from ``seed``, so that
    its outputs differ between images."""
    torch.manual_seed(seed)
    model = MuraDenseNet().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def parity_engine(seed: int = 1) -> InferenceEngine:
    """`seeded_model` on the CPU, in fp32."""
    return InferenceEngine([seeded_model(seed)], [], device=torch.device("cpu"), precision="fp32")


def parity(
    paths: list[Path],
    engine: InferenceEngine,
    display_sides: tuple[int, ...] = (1024, 0),
    device: str = "cpu",
) -> dict[int, list[Parity]]:
    """For each display side and file: the model on the full decode against the model on the
    reduced one (as the worker decodes, with a display image of at most that side; 0 for the
    model alone). One forward pass for all."""
    fulls = [dicom_to_unit(read_dicom(path)) for path in paths]
    reduceds = [
        dicom_to_unit(read_dicom(path), size=DecodeSize(INPUT_SIZE, side, device))
        for side in display_sides
        for path in paths
    ]
    probabilities, cams = engine.predict(torch.stack([unit_to_tensor(u) for u in fulls + reduceds]))
    found: dict[int, list[Parity]] = {}
    for run, side in enumerate(display_sides):
        found[side] = []
        for index, path in enumerate(paths):
            other = len(paths) * (run + 1) + index
            full, reduced = fulls[index], reduceds[other - len(paths)]
            display_difference = 0.0
            if side:
                a, b = display_image(full, side), display_image(reduced, side)
                if a.shape == b.shape:
                    display_difference = float(np.abs(a - b).mean())
            found[side].append(
                Parity(
                    path.name,
                    float(probabilities[index]),
                    float(probabilities[other]),
                    float(np.corrcoef(cams[index].ravel(), cams[other].ravel())[0, 1]),
                    full.shape,
                    reduced.shape,
                    display_difference,
                )
            )
    return found
