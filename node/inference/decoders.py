"""A DICOM image's first frame decoded at the size it is used, on the CPU or on an NVIDIA GPU.

Both ways go through pydicom's pixel-data plugin machinery (``pydicom.pixels.pixel_array`` with
``decoding_plugin``), so pydicom keeps doing what it does for every decoder: cutting out the first
frame, joining its fragments, viewing the bytes as the dataset's integers (signed or not), and the
photometric checks. This module adds two plugins to pydicom's decoders:

- **reduced** (``REDUCED``, CPU, Pillow): JPEG baseline (1.2.840.10008.1.2.4.50) is decoded with
  libjpeg's DCT scaling (Pillow ``Image.draft``: 1/2, 1/4 or 1/8 of each side) and JPEG 2000
  (1.2.840.10008.1.2.4.90/.91) at a lower resolution level of its wavelet decomposition
  (OpenJPEG's reduce factor, Pillow ``Image.reduce``): the image comes out 2**level times smaller
  on each side, rounded up (ISO/IEC 15444-1 B.5), for a fraction of the work. The level is the
  largest that still leaves at least ``DecodeSize.model_side`` pixels on each side (the model's
  input; sides already smaller are never reduced) and ``DecodeSize.display_side`` pixels on the
  longest side (the heatmap's display image), and no larger than the codestream allows (3 for
  JPEG, the number of decomposition levels for JPEG 2000). Only single-sample images of up to 16
  bits take this way; everything else (uncompressed, RLE, JPEG-LS, lossless and 12-bit JPEG,
  HTJ2K, colour, images already small) is decoded in full as before.
- **GPU** (``GPU``, NVIDIA nvImageCodec, the optional ``gpu`` extra): JPEG baseline, JPEG
  lossless, JPEG 2000 and HTJ2K single-sample unsigned images are decoded in full on the current
  CUDA device and come back to host memory. Where the module is missing, no CUDA device is there,
  or nvImageCodec refuses an image, that image takes the CPU way (logged at DEBUG).

A reduced image has the same modality LUT, VOI and photometric interpretation as the full one:
each is a per-pixel mapping, so node/inference/imaging.py applies them to it unchanged. What
differs is only that every pixel of the reduced image is a low-pass average of 2**level x
2**level source pixels (the wavelet's or the DCT's), so a robust percentile window sees slightly
fewer extreme values; tests/unit/test_decoders.py measures what this does to the model's outputs.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from typing import Any

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.pixels.decoders.base import DecodeRunner, get_decoder

log = logging.getLogger(__name__)

REDUCED = "mura-reduced"
GPU = "mura-nvimgcodec"
DECODE_DEVICES = ("auto", "cpu", "cuda")
JPEG_MAX_LEVEL = 3  # libjpeg scales by 1/2, 1/4 and 1/8
_J2K = (uid.JPEG2000Lossless, uid.JPEG2000)
REDUCED_SYNTAXES = (uid.JPEGBaseline8Bit, *_J2K)
GPU_SYNTAXES = (
    uid.JPEGBaseline8Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    *_J2K,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
)
DECODER_DEPENDENCIES = {syntax: ("numpy", "pillow>=10.0") for syntax in GPU_SYNTAXES}


@dataclass(frozen=True)
class DecodeSize:
    """How large a decoded image must stay, in pixels.

    ``model_side``: each side at least this (or the image's own side when smaller): the model
    input's side (320 in the MURA paper). ``display_side``: the longest side at least this (or
    the image's own longest side when smaller): the heatmap's display image; 0 when there is none.
    ``device``: ``cpu``, ``cuda`` (GPU decoding wherever nvImageCodec and a CUDA device are
    there, else the CPU) or ``auto`` (the same as ``cuda``). ``reduce``: False to decode in
    full (on ``device``) whatever the sizes."""

    model_side: int
    display_side: int = 0
    device: str = "cpu"
    reduce: bool = True


def reduction_level(rows: int, columns: int, size: DecodeSize, most: int) -> int:
    """The largest level (0 to ``most``) at which ceil(rows / 2**level) x ceil(columns /
    2**level) still meets ``size``; 0 means decode in full."""
    need_rows, need_columns = min(rows, size.model_side), min(columns, size.model_side)
    need_long = min(max(rows, columns), size.display_side)
    level = 0
    while level < most:
        scale = 2 ** (level + 1)
        smaller_rows, smaller_columns = -(-rows // scale), -(-columns // scale)
        if smaller_rows < need_rows or smaller_columns < need_columns:
            break
        if max(smaller_rows, smaller_columns) < need_long:
            break
        level += 1
    return level


def decode_first_frame(ds: Dataset, size: DecodeSize | None = None) -> np.ndarray:
    """The first frame's stored values (rows x columns, or rows x columns x samples), decoded on
    ``size.device`` and as small as ``size`` allows; ``size`` None: in full, on the CPU.

    A reduced image has ceil(Rows / 2**level) x ceil(Columns / 2**level) pixels. Raises what
    pydicom's decoders raise on data that cannot be decoded at all."""
    syntax = uid.UID(str(getattr(ds.get("file_meta"), "TransferSyntaxUID", "")))
    gpu = size is not None and size.device != "cpu" and syntax in GPU_SYNTAXES
    if gpu and _gpu_suits(ds) and gpu_decoder() is not None:
        try:
            return pixel_array(ds, index=0, decoding_plugin=GPU, on_gpu=True)
        except Exception as exc:  # nvImageCodec refused it: the CPU way below
            log.debug("GPU decoding declined the image, decoding on the CPU: %s", exc)
    if size is not None and size.reduce and syntax in REDUCED_SYNTAXES and _reduced_suits(ds):
        rows, columns = int(ds.Rows), int(ds.Columns)
        level, origin = _most_level(ds, syntax, rows, columns, size)
        # A level the decoder refuses (OpenJPEG does for some codestreams whose header allows
        # it) is tried one smaller, down to the full image.
        for tried in range(level, 0, -1):
            smaller = (
                _reduced_side(origin[0], rows, tried),
                _reduced_side(origin[1], columns, tried),
            )
            try:
                return pixel_array(
                    ds,
                    index=0,
                    decoding_plugin=REDUCED,
                    rows=smaller[0],
                    columns=smaller[1],
                    reduce=tried,
                )
            except Exception as exc:
                log.debug("reduced decoding at level %d declined: %s", tried, exc)
    return pixel_array(ds, index=0)


def _most_level(
    ds: Dataset, syntax: uid.UID, rows: int, columns: int, size: DecodeSize
) -> tuple[int, tuple[int, int]]:
    """The level to decode at, and the image's origin on the reference grid (0, 0 for JPEG)."""
    if syntax == uid.JPEGBaseline8Bit:
        return reduction_level(rows, columns, size, JPEG_MAX_LEVEL), (0, 0)
    from pydicom.encaps import get_frame

    frames = max(int(ds.get("NumberOfFrames") or 1), 1)
    try:
        geometry = j2k_geometry(get_frame(ds.PixelData, 0, number_of_frames=frames))
    except Exception:  # pydicom's decoder reports a broken encapsulation
        geometry = None
    if geometry is None:
        return 0, (0, 0)
    origin, levels = geometry
    return reduction_level(rows, columns, size, levels), origin


def _reduced_side(origin: int, side: int, level: int) -> int:
    """A side's length at ``level`` (ISO/IEC 15444-1 B.5): ceil((origin + side) / 2**level)
    - ceil(origin / 2**level)."""
    return -(-(origin + side) // 2**level) - -(-origin // 2**level)


def _reduced_suits(ds: Dataset) -> bool:
    """One sample per pixel of 1 to 16 bits (what Pillow's decoders return as they are)."""
    try:
        return int(ds.get("SamplesPerPixel") or 1) == 1 and 0 < int(ds.get("BitsStored") or 0) <= 16
    except (TypeError, ValueError):  # pydicom's own decoding reports the broken attribute
        return False


def _gpu_suits(ds: Dataset) -> bool:
    """As for reduced decoding, and unsigned (nvImageCodec's output is taken as unsigned)."""
    try:
        return _reduced_suits(ds) and not int(ds.get("PixelRepresentation") or 0)
    except (TypeError, ValueError):
        return False


def j2k_geometry(frame: bytes) -> tuple[tuple[int, int], int] | None:
    """((YOsiz, XOsiz), fewest decomposition levels) from a JPEG 2000 codestream's main header
    (ISO/IEC 15444-1 A.5.1 SIZ, A.6.1 COD, A.6.2 COC); None when the frame is not a bare
    codestream or its main header is cut short."""
    if frame[:4] != b"\xff\x4f\xff\x51" or len(frame) < 42:
        return None
    x_offset, y_offset = struct.unpack(">2I", frame[16:24])
    component_bytes = 1 if struct.unpack(">H", frame[40:42])[0] < 257 else 2
    offset, levels = 2, None  # after SOC: SIZ and the other marker segments up to SOT
    while offset + 4 <= len(frame):
        marker, length = struct.unpack(">HH", frame[offset : offset + 4])
        if marker == 0xFF90:  # SOT: the main header ends
            break
        if marker < 0xFF00 or length < 2:
            return None
        body = frame[offset + 4 : offset + 2 + length]
        found = None
        if marker == 0xFF52 and len(body) >= 6:  # COD: Scod, SGcod (4 bytes), then the levels
            found = body[5]
        elif marker == 0xFF53 and len(body) >= component_bytes + 2:  # COC: Ccoc, Scoc, levels
            found = body[component_bytes + 1]
        if found is not None:
            levels = found if levels is None else min(levels, found)
        offset += 2 + length
    return None if levels is None else ((y_offset, x_offset), levels)


# pydicom decoder plugins: this module is their module (pydicom imports it by name and calls
# ``is_available`` and the decode function).


class Declined(ValueError):
    """One of these plugins cannot decode a frame; the caller takes another way (logged here
    at DEBUG, so the filter below keeps pydicom from logging it at ERROR)."""


class _NotDeclined(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], Declined))


def is_available(syntax: str) -> bool:
    """pydicom's plugin check: ``syntax`` is one of the transfer syntaxes these plugins take."""
    return syntax in GPU_SYNTAXES


def decode_reduced(src: bytes, runner: DecodeRunner) -> bytes:
    """The REDUCED plugin: one JPEG or JPEG 2000 frame at 1 / 2**``reduce`` of each side,
    as the bytes of ``runner.rows`` x ``runner.columns`` integers of the dataset's kind."""
    from PIL import Image

    level = int(runner.get_option("reduce", 0))
    if level < 1:  # pydicom tries every plugin when its own fail: this one only when asked
        raise Declined("reduced decoding was not asked for")
    try:
        image = Image.open(BytesIO(src), formats=("JPEG", "JPEG2000"))
        if runner.transfer_syntax == uid.JPEGBaseline8Bit:
            image.draft("L", (image.size[0] // 2**level, image.size[1] // 2**level))
        else:
            image.reduce = level  # type: ignore[assignment,method-assign]  # OpenJPEG's reduce
        image.load()
    except Exception as exc:
        raise Declined(f"Pillow: {exc.__class__.__name__}: {exc}") from exc
    if image.size != (runner.columns, runner.rows):
        raise Declined(f"reduced to {image.size}, expected {(runner.columns, runner.rows)}")
    if runner.transfer_syntax == uid.JPEGBaseline8Bit:
        return image.tobytes()
    return _unshift_j2k(image.tobytes(), runner)


def _unshift_j2k(data: bytes, runner: DecodeRunner) -> bytes:
    """Pillow (Jpeg2KDecode.c j2ku_gray_i) widens N-bit samples to 8 or 16 bits by a left shift
    and makes signed ones unsigned by an offset; undone here as pydicom's Pillow plugin does."""
    precision = int(runner.get_option("j2k_precision", runner.bits_stored))
    runner.set_option("bits_allocated", 8 if precision <= 8 else 16)
    array = np.frombuffer(bytearray(data), dtype=f"u{runner.pixel_dtype.itemsize}")
    signed = runner.pixel_representation
    if runner.get_option("apply_j2k_sign_correction", False):
        signed = runner.get_option("j2k_is_signed", signed)
    if signed and runner.pixel_representation == 1:
        array = array.view(runner.pixel_dtype)
        array -= np.int32(2 ** (runner.bits_allocated - 1)).astype(array.dtype)
    if shift := runner.bits_allocated - precision:
        np.right_shift(array, shift, out=array)
    return array.tobytes()


def decode_gpu(src: bytes, runner: DecodeRunner) -> bytes:
    """The GPU plugin: one frame decoded by nvImageCodec on the current CUDA device, as the bytes
    of ``runner.rows`` x ``runner.columns`` unsigned integers; ValueError when it refuses."""
    from nvidia import nvimgcodec

    decoder = gpu_decoder() if runner.get_option("on_gpu", False) else None
    if decoder is None:  # also when pydicom tries this plugin after its own failed
        raise Declined("GPU decoding not asked for, or no CUDA device")
    try:
        params = nvimgcodec.DecodeParams(
            color_spec=nvimgcodec.ColorSpec.UNCHANGED,
            allow_any_depth=True,
            apply_exif_orientation=False,
        )
        image = decoder.decode(src, params=params)
        array = None if image is None else np.asarray(image.cpu())
    except Exception as exc:
        raise Declined(f"nvImageCodec: {exc.__class__.__name__}: {exc}") from exc
    if array is None:
        raise Declined("nvImageCodec cannot decode this frame")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.shape != (runner.rows, runner.columns) or array.dtype not in (np.uint8, np.uint16):
        raise Declined(f"nvImageCodec decoded {array.shape} {array.dtype}")
    runner.set_option("bits_allocated", 8 * array.dtype.itemsize)
    return np.ascontiguousarray(array).tobytes()


@cache
def gpu_decoder() -> Any | None:
    """This process's nvImageCodec decoder on the current CUDA device, or None when the module
    (the ``gpu`` extra) is missing or has no device (logged once, at DEBUG)."""
    try:
        from nvidia import nvimgcodec

        return nvimgcodec.Decoder()
    except Exception as exc:  # ImportError, or RuntimeError without CUDA or its libraries
        log.debug("GPU decoding unavailable, decoding on the CPU: %s", exc)
        return None


def _register() -> None:
    """Add the two plugins to pydicom's decoders for their transfer syntaxes (once)."""
    logging.getLogger("pydicom.pixels.decoders.base").addFilter(_NotDeclined())
    for syntax in GPU_SYNTAXES:
        decoder = get_decoder(syntax)
        if syntax in REDUCED_SYNTAXES and REDUCED not in decoder.available_plugins:
            decoder.add_plugin(REDUCED, (__name__, "decode_reduced"))
        if GPU not in decoder.available_plugins:
            decoder.add_plugin(GPU, (__name__, "decode_gpu"))


_register()
