"""The inference engine: model cards to a loaded ensemble, images to probabilities and CAMs.

- Per image: the probability is the mean over the ensemble's models of sigmoid(logit); its map is
  the mean of the models' raw class activation maps (so the map still adds up to the mean logit).
- Per study: the probability is the mean of its images' probabilities (the MURA paper's rule);
  the study is abnormal when the probability is above its threshold.
- Thresholds, first that applies: ``model.thresholds.<study type>`` in the configuration, the first
  card's ``thresholds.<study type>``, the first card's ``thresholds.default``, ``model.threshold``.
- Images are batched up to ``model.batch_size`` across studies (0: `auto_batch_size`, the best
  measured throughputs); memory stays bounded whatever the study size, because batches are cut
  at that size and maps stay at feature resolution.
- Device ``auto`` is CUDA when present. On CUDA the models run with autocast in bf16 or fp16
  (``model.precision``); on the CPU in fp32 with ``model.cpu_threads`` threads. Both use the
  channels-last memory layout unless ``model.channels_last`` is false (on the CPU it lets oneDNN
  run DenseNet-169 about 1.5 to 2 times faster).
- Without cards, the engine starts only with ``model.allow_untrained`` and then says it is
  untrained (random weights, fixed seed) so that every output can say so.

Stored DICOM files become model input in node/inference/preprocessing.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from node.config import ModelConfig
from node.errors import CheckpointError
from node.inference.cards import ModelCard, load_card, load_weights
from node.inference.imaging import IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE
from node.inference.model import MuraDenseNet
from node.profiles import MURA_STUDY_TYPES

log = logging.getLogger(__name__)

UNTRAINED_SEED = 0
AUTO_BATCH_CPU = 4
AUTO_BATCH_CPU_ONE_THREAD = 1
AUTO_BATCH_CUDA = 32
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ImageResult:
    probability: float
    cam: np.ndarray  # raw map at feature resolution, ensemble mean, float32


@dataclass(frozen=True)
class StudyResult:
    study_type: str | None
    probability: float
    threshold: float
    abnormal: bool
    images: tuple[ImageResult, ...]


def auto_batch_size(device: torch.device) -> int:
    """The batch ``model.batch_size = 0`` means on ``device`` (docs/performance.md, engine and
    pipeline): 32 on CUDA; on the CPU 4 with two or more threads (oneDNN's best for DenseNet-169
    at 320 x 320), 1 on a single thread, where batches of 1 to 6 run equally fast; a worker claims
    studies until their images fill a batch, so a larger one there would only take studies that
    another single-threaded worker could be running."""
    if device.type == "cuda":
        return AUTO_BATCH_CUDA
    return AUTO_BATCH_CPU if torch.get_num_threads() > 1 else AUTO_BATCH_CPU_ONE_THREAD


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"model.device is {name!r} but no CUDA device is available")
    return device


class InferenceEngine:
    def __init__(
        self,
        models: Sequence[MuraDenseNet],
        cards: Sequence[ModelCard],
        *,
        device: torch.device,
        precision: str = "bf16",
        channels_last: bool = True,
        batch_size: int = 0,
        threshold: float = 0.5,
        thresholds: Mapping[str, float] | None = None,
        untrained: bool = False,
        input_size: int = INPUT_SIZE,
    ) -> None:
        if not models:
            raise CheckpointError("an engine needs at least one model")
        self.cards = tuple(cards)
        self.device = device
        self.cuda = device.type == "cuda"
        self.autocast = _AUTOCAST.get(precision) if self.cuda else None
        self.precision = precision if self.autocast is not None else "fp32"
        self.batch_size = batch_size or auto_batch_size(device)
        self.threshold = threshold
        self.thresholds = dict(thresholds or {})
        self.untrained = untrained
        self.input_size = input_size
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.memory_format = memory_format
        self.models = [m.eval().to(device).to(memory_format=memory_format) for m in models]

    @classmethod
    def from_config(cls, config: ModelConfig) -> InferenceEngine:
        device = resolve_device(config.device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = (
                True  # fixed input size: let cuDNN pick its fastest kernels
            )
        if device.type == "cpu" and config.cpu_threads > 0:
            torch.set_num_threads(config.cpu_threads)
        cards = [load_card(Path(p)) for p in config.cards]
        if cards:
            sizes = {c.input_size for c in cards}
            norms = {(c.mean, c.std) for c in cards}
            if len(sizes) > 1 or len(norms) > 1:
                raise CheckpointError(
                    "the cards of an ensemble must share input size and normalisation"
                )
            if norms != {(IMAGENET_MEAN, IMAGENET_STD)}:
                raise CheckpointError(
                    "only ImageNet normalisation is supported by the preprocessing"
                )
            models = []
            for card in cards:
                model = MuraDenseNet()
                try:
                    model.load_state_dict(load_weights(card), strict=True)
                except RuntimeError as exc:
                    raise CheckpointError(
                        f"weights of {card.path} do not fit DenseNet-169: {exc}"
                    ) from None
                models.append(model)
            input_size = cards[0].input_size
        elif config.allow_untrained:
            log.warning(
                "no model cards configured: running UNTRAINED (random weights); results are meaningless"
            )
            torch.manual_seed(UNTRAINED_SEED)
            models, input_size = [MuraDenseNet()], INPUT_SIZE
        else:
            raise CheckpointError(
                "no model configured: set model.cards to one or more model card files "
                "(see models/README.md), or model.allow_untrained = true to run without weights"
            )
        return cls(
            models,
            cards,
            device=device,
            precision=config.precision,
            channels_last=config.channels_last,
            batch_size=config.batch_size,
            threshold=config.threshold,
            thresholds=config.thresholds,
            untrained=not cards,
            input_size=input_size,
        )

    def threshold_for(self, study_type: str | None) -> float:
        if study_type is not None and study_type in self.thresholds:
            return self.thresholds[study_type]
        first = self.cards[0].thresholds if self.cards else {}
        if study_type is not None and study_type in first:
            return first[study_type]
        return first.get("default", self.threshold)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, 3, S, S) to probabilities (N,) and raw maps (N, h, w), ensemble means."""
        probabilities, maps = [], []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(
                self.device, memory_format=self.memory_format, non_blocking=self.cuda
            )
            total_p: torch.Tensor | None = None
            total_cam: torch.Tensor | None = None
            for model in self.models:
                with torch.autocast(
                    device_type=self.device.type,
                    dtype=self.autocast or torch.float32,
                    enabled=self.autocast is not None,
                ):
                    logits, cams = model(batch)
                p, cam = torch.sigmoid(logits.float()), cams.float()
                total_p = p if total_p is None else total_p + p
                total_cam = cam if total_cam is None else total_cam + cam
            assert total_p is not None and total_cam is not None
            probabilities.append((total_p / len(self.models)).cpu())
            maps.append((total_cam / len(self.models)).cpu())
        if not probabilities:
            return np.zeros((0,), np.float32), np.zeros((0, 0, 0), np.float32)
        return torch.cat(probabilities).numpy(), torch.cat(maps).numpy()

    def predict_studies(
        self, studies: Sequence[tuple[str | None, Sequence[torch.Tensor]]]
    ) -> list[StudyResult]:
        """Several studies' images in shared batches; one result per study, in order."""
        counts = [len(images) for _, images in studies]
        if any(n == 0 for n in counts):
            raise ValueError("a study needs at least one image")
        stacked = torch.stack([image for _, images in studies for image in images])
        probabilities, maps = self.predict(stacked)
        results, start = [], 0
        for (study_type, _), count in zip(studies, counts, strict=True):
            p = probabilities[start : start + count]
            images = tuple(ImageResult(float(p[i]), maps[start + i]) for i in range(count))
            probability = float(np.mean(p))
            threshold = self.threshold_for(study_type)
            results.append(
                StudyResult(study_type, probability, threshold, probability > threshold, images)
            )
            start += count
        return results

    def describe(self) -> dict[str, Any]:
        return {
            "untrained": self.untrained,
            "models": [card.describe() for card in self.cards],
            "ensemble_size": len(self.models),
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.cuda else "CPU",
            "precision": self.precision,
            "channels_last": self.memory_format == torch.channels_last,
            "cpu_threads": torch.get_num_threads(),
            "batch_size": self.batch_size,
            "input_size": self.input_size,
            "thresholds": {
                study_type: self.threshold_for(study_type) for study_type in MURA_STUDY_TYPES
            },
            "torch": torch.__version__,
        }
