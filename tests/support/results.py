"""Inputs shared by the results tests: the node's identity, trained algorithms, an engine's result, and a study's
cleaned sources, positions and blended heatmaps for the summary image."""

from __future__ import annotations

import hashlib

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.inference.engine import ImageResult, StudyResult
from node.inference.imaging import dicom_to_unit
from node.results.identity import AlgorithmInfo, NodeIdentity
from node.results.order import SourcePosition
from node.results.sanitise import clean_source
from node.results.sc import blend_heatmap
from tests.support.factory import make_radiograph

IDENTITY = NodeIdentity(device_uid=generate_uid(), ae_title="MURA_NODE")
SHA = hashlib.sha256(b"mura-densenet169 1").hexdigest()  # the weights' hash a card names
TRAINED = AlgorithmInfo("MURA DenseNet-169", "1", (f"mura-densenet169 1 sha256:{SHA}",), False)


def summary_study(count: int) -> tuple[list[Dataset], list[SourcePosition], list[np.ndarray]]:
    """``count`` 160 x 120 wrist radiographs of one study: their cleaned sources, positions and
    heatmaps blended over them (RGB uint8, H x W x 3)."""
    uid = generate_uid()
    raws = [
        make_radiograph(
            study_uid=uid, rows=160, columns=120, seed=i, study_description="XR WRIST 3 VIEWS"
        )
        for i in range(count)
    ]
    for index, raw in enumerate(raws):
        raw.InstanceNumber, raw.ViewPosition = index + 1, ("PA", "LL", "AP")[index % 3]
    cams = [np.random.default_rng(i).normal(size=(10, 10)).astype(np.float32) for i in range(count)]
    blends = [blend_heatmap(dicom_to_unit(raw), cam) for raw, cam in zip(raws, cams, strict=True)]
    return (
        [clean_source(raw)[0] for raw in raws],
        [SourcePosition.of(r) for r in raws],
        blends,
    )


ALGORITHM = AlgorithmInfo(
    "MURA DenseNet-169", "1", ("mura-densenet169 1 " + "ab" * 32,), untrained=False
)


def result(
    probabilities: tuple[float, ...],
    threshold: float = 0.5,
    study_type: str = "wrist",
    cams: tuple[np.ndarray, ...] | None = None,
) -> StudyResult:
    maps = cams or tuple(np.zeros((2, 2), np.float32) for _ in probabilities)
    images = tuple(ImageResult(p, cam) for p, cam in zip(probabilities, maps, strict=True))
    mean = float(np.mean(probabilities))
    return StudyResult(study_type, mean, threshold, mean > threshold, images)
