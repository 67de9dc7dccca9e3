"""Radiograph to model input: one path for DICOM (serving) and PNG (training on MURA).

Every image goes through two steps, so that the model always sees the same kind of tensor:

1. **to display values** (``dicom_to_unit`` or ``png_to_unit``): a float32 array in [0, 1], where 1 is
   bright as a radiologist would see it, H x W for grayscale or H x W x 3 for colour.
2. **to model input** (``unit_to_tensor``): grayscale is repeated into 3 channels (as MURA's PNGs are
   read as RGB), the image is scaled to ``size`` x ``size`` (320 in the paper; aspect ratio not kept,
   as in the paper) with bilinear, antialiased interpolation, and normalised with the ImageNet mean
   and standard deviation.

DICOM choices, in the order they are applied (PS3.3 C.11 "grayscale pipeline"):

- Decoding goes through pydicom and its plugins (pylibjpeg-libjpeg: JPEG baseline and lossless;
  pylibjpeg-openjpeg: JPEG 2000; pyjpegls: JPEG-LS; RLE built in). Multi-frame objects contribute
  their first frame. Rows x Columns x frames above ``max_pixels`` are refused before decoding.
- Colour (SamplesPerPixel 3): pydicom converts YBR to RGB; values are divided by 2**BitsStored - 1.
  No VOI applies to colour images.
- Modality LUT / RescaleSlope and RescaleIntercept first (this also makes signed pixels plain
  numbers).
- VOI: the first item of the VOI LUT Sequence when there is one (its output scaled by the LUT's
  nominal bit depth); else the first WindowCenter/WindowWidth pair, with VOILUTFunction LINEAR (the
  default), LINEAR_EXACT or SIGMOID; else, for images of up to 8 stored bits, the full stored range
  (so an 8-bit image made from a PNG keeps its values), and for deeper images a robust window from
  the 0.5th to the 99.5th percentile of the pixel values (CR and DX detectors rarely use their full
  range, and a few saturated pixels must not decide the contrast; the percentiles are taken on an
  evenly strided sample of at most about 250,000 pixels).
- MONOCHROME1 is inverted after the VOI, so 1 is always bright. Arithmetic is float32 (exact for
  16-bit stored values).

PNG choices: 8-bit images are divided by 255, 16-bit ones by 65535; palette, grey+alpha and RGBA
images are converted to RGB first, like PIL's ``convert("RGB")`` that MURA reproductions use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi

from node.errors import UndecodableImage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 320
MAX_PIXELS = 100_000_000
PERCENTILES = (0.5, 99.5)
PERCENTILE_SAMPLE = 250_000


def dicom_to_unit(ds: Dataset, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a DICOM image into display values in [0, 1] (see the module docstring)."""
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    frames = int(ds.get("NumberOfFrames") or 1)
    if rows <= 0 or columns <= 0:
        raise UndecodableImage(f"image has {rows} rows and {columns} columns")
    if rows * columns * max(frames, 1) > max_pixels:
        raise UndecodableImage(
            f"image of {rows} x {columns} x {frames} pixels exceeds {max_pixels}"
        )
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types on corrupt or unsupported data
        raise UndecodableImage(
            f"cannot decode pixel data: {exc.__class__.__name__}: {exc}"
        ) from None
    samples = int(ds.get("SamplesPerPixel") or 1)
    if frames > 1 or pixels.ndim == (4 if samples == 3 else 3):
        pixels = pixels[0]
    bits = int(ds.get("BitsStored") or 8)
    if samples == 3:
        return np.clip(pixels.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)
    if pixels.ndim != 2:
        raise UndecodableImage(f"unexpected pixel array shape {pixels.shape}")
    values = apply_modality_lut(pixels, ds).astype(np.float32, copy=False)
    unit = _voi(values, ds, bits)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        unit = 1.0 - unit
    return np.clip(unit, 0.0, 1.0).astype(np.float32, copy=False)


def _voi(values: np.ndarray, ds: Dataset, bits: int) -> np.ndarray:
    if ds.get("VOILUTSequence"):
        mapped = apply_voi(np.rint(values).astype(np.int64), ds, 0)
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return mapped.astype(np.float32) / np.float32(2**depth - 1)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        return window(
            values, center, width, str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
        )
    if bits <= 8 and not int(ds.get("PixelRepresentation") or 0) and "RescaleSlope" not in ds:
        return values / np.float32(2**bits - 1)
    # Percentiles of an evenly strided sample of at most ~250,000 pixels: the same window for any
    # practical purpose, ten times faster on a 1760 x 1760 radiograph.
    step = max(1, int(np.sqrt(values.size / PERCENTILE_SAMPLE)))
    low, high = np.percentile(values[::step, ::step], PERCENTILES)
    if high <= low:
        return np.zeros_like(values)
    return (values - np.float32(low)) / np.float32(high - low)


def _first(value: object) -> float | None:
    """The first of a possibly multi-valued number (the first window when there are several)."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing into [0, 1]."""
    center, width = float(center), float(width)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        width = 1.0
    if width == 1:
        return (values >= center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def png_to_unit(path: Path) -> np.ndarray:
    """Read a PNG (MURA's format) into display values in [0, 1]."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float64)
            scale = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
            return np.clip(array / scale, 0.0, 1.0).astype(np.float32)
        converted = image if image.mode == "L" else image.convert("RGB")
        return np.asarray(converted, dtype=np.float32) / 255.0


def unit_to_tensor(unit: np.ndarray, size: int = INPUT_SIZE) -> torch.Tensor:
    """Display values to a normalised 3 x size x size float32 tensor."""
    tensor = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    resized = F.interpolate(
        tensor.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )[0].expand(3, -1, -1)  # grayscale is resized once, then repeated into 3 channels
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((resized - mean) / std).contiguous()


def read_dicom(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except Exception as exc:
        raise UndecodableImage(f"cannot read DICOM file: {exc.__class__.__name__}") from None


def dicom_file_to_tensor(
    path: Path, size: int = INPUT_SIZE, max_pixels: int = MAX_PIXELS
) -> torch.Tensor:
    """The serving path: a stored DICOM file to model input."""
    return unit_to_tensor(dicom_to_unit(read_dicom(path), max_pixels), size)


def png_file_to_tensor(path: Path, size: int = INPUT_SIZE) -> torch.Tensor:
    """The training path: a MURA PNG to model input."""
    return unit_to_tensor(png_to_unit(path), size)


def display_image(unit: np.ndarray, max_side: int) -> np.ndarray:
    """Display values scaled down (never up) so the longest side is at most ``max_side``."""
    height, width = unit.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return unit
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    tensor = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
    small = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)[
        0
    ]
    return (small[0] if unit.ndim == 2 else small.permute(1, 2, 0)).clamp(0, 1).numpy()


def dicom_file_to_inputs(
    path: Path, size: int = INPUT_SIZE, max_pixels: int = MAX_PIXELS, display_side: int = 1024
) -> tuple[torch.Tensor, np.ndarray]:
    """One decode, two outputs: the model input and the display image for the heatmap."""
    unit = dicom_to_unit(read_dicom(path), max_pixels)
    return unit_to_tensor(unit, size), display_image(unit, display_side)
