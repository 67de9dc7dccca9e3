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
  their first frame, and only that frame is decoded. Rows x Columns x frames above ``max_pixels``
  are refused before decoding. Given a ``DecodeSize`` (serving), JPEG and JPEG 2000 images are
  decoded only as large as the model input and the display image need, or on an NVIDIA GPU
  (node/inference/decoders.py); the steps below are the same.
- Nothing a peer sent may make decoding take more memory than the image the data set declares
  (a decompression bomb): before decoding, a JPEG, JPEG-LS or JPEG 2000 frame whose own header
  declares another size or number of components than Rows, Columns and SamplesPerPixel is
  refused (decoders allocate what the codestream declares), an RLE frame whose segments would
  decode to more than Rows x Columns bytes each is refused, and a deflated data set is inflated
  only as far as its image needs (``read_dicom``).
- Every failure on the way (unreadable attributes, a broken LUT, values that are not finite
  numbers after the modality LUT and VOI) is an ``UndecodableImage`` that says why.
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

import itertools
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.filereader import read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, RLELossless

from node.deflate import HEADER_BYTES, DeflatedReader
from node.errors import UndecodableImage
from node.inference.cards import IMAGENET_MEAN as IMAGENET_MEAN  # the model card's defaults
from node.inference.cards import IMAGENET_STD as IMAGENET_STD
from node.inference.cards import INPUT_SIZE as INPUT_SIZE
from node.inference.decoders import DecodeSize, decode_first_frame

MAX_PIXELS = 100_000_000
PERCENTILES = (0.5, 99.5)
PERCENTILE_SAMPLE = 250_000
# A deflated data set is inflated in two steps: this much to read its header (and so the size of
# its image), then at most the header, the image's bytes and this slack.
DEFLATED_SLACK_BYTES = 1024 * 1024


def dicom_to_unit(
    ds: Dataset, max_pixels: int = MAX_PIXELS, size: DecodeSize | None = None
) -> np.ndarray:
    """A DICOM image as display values in [0, 1], H x W (x 3) (see the module docstring); in
    full, or as small as ``size`` allows (JPEG, JPEG 2000: 2, 4 or 8 times smaller a side)."""
    rows, columns, frames = _image_size(ds)
    if rows <= 0 or columns <= 0:
        raise UndecodableImage(f"image has {rows} rows and {columns} columns")
    if rows * columns * max(frames, 1) > max_pixels:
        raise UndecodableImage(
            f"image of {rows} x {columns} x {frames} pixels exceeds {max_pixels}"
        )
    samples = _integer(ds, "SamplesPerPixel", 1)
    _check_compressed_frame(ds, rows, columns, samples, frames)
    try:
        pixels = decode_first_frame(ds, size)  # the first frame only
    except Exception as exc:  # decoders raise many types on corrupt or unsupported data
        raise UndecodableImage(
            f"cannot decode pixel data: {exc.__class__.__name__}: {exc}"
        ) from None
    bits = _integer(ds, "BitsStored", 8)
    try:
        if samples == 3:
            unit = np.clip(pixels.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)
        else:
            if pixels.ndim != 2:
                raise UndecodableImage(f"unexpected pixel array shape {pixels.shape}")
            values = apply_modality_lut(pixels, ds).astype(np.float32, copy=False)
            unit = _voi(values, ds, bits)
            if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
                unit = 1.0 - unit
    except UndecodableImage:
        raise
    except Exception as exc:  # a malformed LUT, window or rescale attribute
        raise UndecodableImage(
            f"cannot apply the modality LUT or VOI: {exc.__class__.__name__}: {exc}"
        ) from None
    if not np.isfinite(unit).all():
        raise UndecodableImage(
            "display values are not finite numbers (check RescaleSlope, RescaleIntercept, "
            "WindowCenter and WindowWidth)"
        )
    return np.clip(unit, 0.0, 1.0).astype(np.float32, copy=False)


def _integer(ds: Dataset, keyword: str, default: int) -> int:
    """An integer attribute, or ``default`` when absent or empty; UndecodableImage when invalid."""
    try:
        value = ds.get(keyword)
        if isinstance(value, MultiValue | list | tuple):
            value = value[0] if len(value) else None
        return default if value is None or value == "" else int(value)
    except Exception:
        raise UndecodableImage(f"{keyword} is not an integer") from None


def _image_size(ds: Dataset) -> tuple[int, int, int]:
    return _integer(ds, "Rows", 0), _integer(ds, "Columns", 0), _integer(ds, "NumberOfFrames", 1)


def _check_compressed_frame(
    ds: Dataset, rows: int, columns: int, samples: int, frames: int
) -> None:
    """Refuse, before any decoder sees it, a compressed first frame that would decode to more
    than the image the data set declares."""
    syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    if "PixelData" not in ds or syntax is None or not UID(str(syntax)).is_encapsulated:
        return  # nothing to check, or native pixel data: the decoder checks its length
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=max(frames, 1))
    except Exception as exc:
        raise UndecodableImage(
            f"cannot decode pixel data: {exc.__class__.__name__}: {exc}"
        ) from None
    if syntax == RLELossless:
        _check_rle_frame(frame, rows * columns)
        return
    try:
        declared = codestream_size(frame)
    except ValueError as exc:
        raise UndecodableImage(f"cannot decode pixel data: {exc}") from None
    if declared is None:
        return  # not a codestream this check knows; the decoder decides
    height, width, components = declared
    if (height, width, components) != (rows, columns, samples):
        raise UndecodableImage(
            f"compressed frame declares {height} x {width} pixels with {components} "
            f"component(s), the data set {rows} x {columns} with {samples}"
        )


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7})
_SOF_MARKERS |= frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})  # 0xF7: JPEG-LS SOF55


def codestream_size(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) that a JPEG, JPEG-LS or JPEG 2000 frame declares in its own
    header; None when the frame starts with none of these; ValueError when the header that it
    starts with is broken."""
    if frame.startswith(b"\x00\x00\x00\x0cjP  "):  # JP2 file format: the codestream box
        box = frame.find(b"jp2c")
        return None if box < 0 else codestream_size(frame[box + 4 :])
    if frame[:4] == b"\xff\x4f\xff\x51":  # JPEG 2000: SOC, then SIZ (15444-1 A.5.1)
        if len(frame) < 42:
            raise ValueError("JPEG 2000 SIZ segment is cut short")
        xsiz, ysiz, x_offset, y_offset = struct.unpack(">4I", frame[8:24])
        components = struct.unpack(">H", frame[40:42])[0]
        return ysiz - y_offset, xsiz - x_offset, components
    if frame[:2] != b"\xff\xd8":  # JPEG and JPEG-LS: SOI, then segments up to the SOF
        return None
    offset = 2
    while offset + 4 <= len(frame):
        if frame[offset] != 0xFF:
            raise ValueError("JPEG marker segments are broken before the frame header")
        marker = frame[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _SOF_MARKERS:
            if offset + 10 > len(frame):
                raise ValueError("JPEG frame header is cut short")
            height, width = struct.unpack(">HH", frame[offset + 5 : offset + 9])
            return height, width, frame[offset + 9]
        if marker in (0xD9, 0xDA):  # EOI or SOS before any SOF
            break
        offset += 2 + struct.unpack(">H", frame[offset + 2 : offset + 4])[0]
    raise ValueError("JPEG data has no frame header")


def _check_rle_frame(frame: bytes, segment_bytes: int) -> None:
    """Refuse an RLE frame (PS3.5 G) with a segment that decodes to far more than one byte plane
    of the image: pydicom decodes a segment whole before it cuts it to length, and two bytes of
    input can make 128 bytes of output. Some encoders pad a little, so up to twice is let be."""
    if len(frame) < 64:
        return  # the decoder refuses it
    count, *offsets = struct.unpack("<16L", frame[:64])
    bounds = [*offsets[: min(count, 15)], len(frame)]
    if not 1 <= count <= 15 or any(b <= a for a, b in itertools.pairwise([63, *bounds])):
        return  # a malformed header: the decoder refuses it without decoding anything
    limit = 2 * segment_bytes + 1024
    for start, stop in itertools.pairwise(bounds):
        if _rle_decoded_length(frame, start, stop, limit) > limit:
            raise UndecodableImage(
                f"an RLE segment decodes to more than twice the {segment_bytes} bytes it should"
            )


def _rle_decoded_length(frame: bytes, start: int, stop: int, limit: int) -> int:
    """Bytes one PackBits segment decodes to, counting stops once past ``limit``."""
    position, total = start, 0
    while position < stop and total <= limit:
        header = frame[position]
        if header > 128:  # a run: the next byte 257 - header times
            total += 257 - header
            position += 2
        elif header < 128:  # header + 1 literal bytes
            total += header + 1
            position += header + 2
        else:
            position += 1
    return total


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


def read_dicom(path: Path, max_pixels: int = MAX_PIXELS) -> Dataset:
    """Read a stored file; a deflated data set is inflated only as far as its image needs."""
    try:
        meta = read_file_meta_info(path)
        if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            return _read_deflated(path, meta, max_pixels)
        return dcmread(path)
    except UndecodableImage:
        raise
    except Exception as exc:
        raise UndecodableImage(f"cannot read DICOM file: {exc.__class__.__name__}") from None


def _read_deflated(path: Path, meta: FileMetaDataset, max_pixels: int) -> Dataset:
    """pydicom inflates a deflated data set whole, however large it inflates (a deflate bomb of
    a few megabytes becomes gigabytes). Here (node/deflate.py): inflate enough to read the
    header, work out how many bytes its image has, and refuse a data set that inflates to more."""
    with DeflatedReader(path) as reader:
        reader.inflate_to(HEADER_BYTES)
        header = reader.dataset(stop_before_pixels=True)
        rows, columns, frames = _image_size(header)
        if rows * columns * max(frames, 1) > max_pixels:
            raise UndecodableImage(
                f"image of {rows} x {columns} x {frames} pixels exceeds {max_pixels}"
            )
        samples = min(max(_integer(header, "SamplesPerPixel", 1), 1), 4)
        bytes_per_sample = min(max(-(-_integer(header, "BitsAllocated", 16) // 8), 1), 8)
        image_bytes = max(rows, 0) * max(columns, 0) * max(frames, 1) * samples * bytes_per_sample
        limit = HEADER_BYTES + image_bytes + DEFLATED_SLACK_BYTES
        reader.inflate_to(limit + 1)
        if len(reader.inflated) > limit:
            raise UndecodableImage(
                f"deflated data set inflates to more than {limit} bytes, more than its "
                f"{rows} x {columns} image needs"
            )
        ds = reader.dataset()
    ds.file_meta = meta
    ds.set_original_encoding(False, True)
    return ds


def dicom_file_to_tensor(
    path: Path, size: int = INPUT_SIZE, max_pixels: int = MAX_PIXELS, *, reduced: bool = False,
    device: str = "cpu",
) -> torch.Tensor:  # fmt: skip
    """The serving path: a stored DICOM file to model input; ``reduced``: decoded no larger than
    that needs; ``device``: where JPEG and JPEG 2000 are decoded (node/inference/decoders.py)."""
    wanted = DecodeSize(size, 0, device, reduced)
    return unit_to_tensor(dicom_to_unit(read_dicom(path, max_pixels), max_pixels, wanted), size)


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
    path: Path,
    size: int = INPUT_SIZE,
    max_pixels: int = MAX_PIXELS,
    display_side: int = 1024,
    *,
    reduced: bool = False,
    device: str = "cpu",
) -> tuple[torch.Tensor, np.ndarray]:
    """One decode (``reduced``: no larger than both need), two outputs: the model input and the
    display image for the heatmap (longest side at most ``display_side``)."""
    wanted = DecodeSize(size, display_side, device, reduced)
    unit = dicom_to_unit(read_dicom(path, max_pixels), max_pixels, wanted)
    return unit_to_tensor(unit, size), display_image(unit, display_side)
