"""Stored DICOM files to model input, in worker processes when asked (node/inference/imaging.py decodes).

Decoding a large JPEG 2000 radiograph takes a tenth of a second or more of CPU; in separate
processes it runs in parallel and never holds up the process that runs the model. Every file
comes back as its model input (a float32 tensor, 3 x size x size) or as an ``UndecodableImage``
that says why it cannot be used: a file that fails in any other way (even a MemoryError) fails
only its own image.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from node.errors import UndecodableImage
from node.inference.decoders import DECODE_DEVICES
from node.inference.imaging import (
    INPUT_SIZE,
    MAX_PIXELS,
    dicom_file_to_inputs,
    dicom_file_to_tensor,
)

ModelInput = torch.Tensor  # 3 x size x size, float32, normalised (node/inference/imaging.py)
WithDisplay = tuple[torch.Tensor, np.ndarray]  # model input, display image (H x W[ x 3] in [0, 1])
# path, size, max_pixels, display_side, reduced decoding, decode device
Job = tuple[str, int, int, int, bool, str]
_Loaded = TypeVar("_Loaded", ModelInput, WithDisplay)


def _load_tensor(job: Job) -> ModelInput | UndecodableImage:
    path, size, max_pixels, _display_side, reduced, device = job
    return _guarded(
        lambda: dicom_file_to_tensor(Path(path), size, max_pixels, reduced=reduced, device=device)
    )


def _load_with_display(job: Job) -> WithDisplay | UndecodableImage:
    path, size, max_pixels, display_side, reduced, device = job
    return _guarded(
        lambda: dicom_file_to_inputs(
            Path(path), size, max_pixels, display_side, reduced=reduced, device=device
        )
    )


def _guarded(load: Callable[[], _Loaded]) -> _Loaded | UndecodableImage:
    """``load()``, or the UndecodableImage it raised, or one that names any other exception."""
    try:
        return load()
    except UndecodableImage as exc:
        return exc
    except Exception as exc:  # anything imaging did not foresee still fails only this image
        return UndecodableImage(f"cannot prepare the image: {exc.__class__.__name__}: {exc}")


class DicomPreprocessor:
    """Stored DICOM files to model input, in ``workers`` spawned processes (0: in this one).

    ``size``: the model's input side in pixels; ``max_pixels``: Rows x Columns x frames above
    which a file is refused before decoding (node/inference/imaging.py); ``decode_device``:
    ``cpu``, or ``auto``/``cuda`` to decode JPEG and JPEG 2000 on an NVIDIA GPU wherever
    nvImageCodec and a CUDA device are there (node/inference/decoders.py); ``reduced``: JPEG
    baseline and JPEG 2000 images decoded on the CPU come out no larger than the model input and
    the display image need (2, 4 or 8 times smaller on each side)."""

    def __init__(
        self,
        workers: int = 0,
        size: int = INPUT_SIZE,
        max_pixels: int = MAX_PIXELS,
        decode_device: str = "cpu",
        reduced: bool = True,
    ) -> None:
        if decode_device not in DECODE_DEVICES:
            raise ValueError(
                f"decode_device must be one of {DECODE_DEVICES}, got {decode_device!r}"
            )
        self.size = size
        self.max_pixels = max_pixels
        self.decode_device = decode_device
        self.reduced = reduced
        self.pool: ProcessPoolExecutor | None = None
        if workers > 0:
            self.pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_quiet_worker,
            )
            # Start every process now (each imports torch, which takes seconds), not during the
            # first study.
            list(self.pool.map(_ready, range(workers)))

    def map(self, paths: Sequence[Path]) -> list[ModelInput | UndecodableImage]:
        """One model input or UndecodableImage per path, in order."""
        return self._run(_load_tensor, [self._job(p, 0) for p in paths])

    def map_with_display(
        self, paths: Sequence[Path], display_side: int = 1024
    ) -> list[WithDisplay | UndecodableImage]:
        """Model inputs and display images (longest side <= display_side) from one decode each."""
        return self._run(_load_with_display, [self._job(p, display_side) for p in paths])

    def _job(self, path: Path, display_side: int) -> Job:
        return (
            str(path),
            self.size,
            self.max_pixels,
            display_side,
            self.reduced,
            self.decode_device,
        )

    def _run(
        self, load: Callable[[Job], _Loaded | UndecodableImage], jobs: list[Job]
    ) -> list[_Loaded | UndecodableImage]:
        if self.pool is None:
            return [load(job) for job in jobs]
        return list(self.pool.map(load, jobs))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _ready(index: int) -> int:
    return index


def _quiet_worker() -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the model's threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")
