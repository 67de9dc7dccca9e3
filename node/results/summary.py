"""One summary image per study: a Secondary Capture that every image viewer can show.

Pixels (`render_summary`, 1024 pixels wide, text drawn as in node/results/drawing.py):

- "UNTRAINED MODEL - NOT FOR DIAGNOSIS" when the engine is untrained;
- the study's finding (ABNORMAL or NORMAL) and type, its probability and the threshold it is
  compared with, and the number of images;
- a thumbnail of each image with its heatmap (`node.results.sc.blend_heatmap`), numbered in the
  source's order (node/results/order.py) with its probability, series, instance and view;
- the algorithm's name and version and each checkpoint's name, version and SHA-256;
- the node's name and version and "NOT FOR PRIMARY DIAGNOSIS", and the heatmap's colour scale.

Header (`build_summary`): patient and study from the study's first image (cleaned, as for the SR),
its own series (number 992, "AI summary mura-node - NOT FOR PRIMARY DIAGNOSIS"), ImageType
DERIVED\\SECONDARY, BurnedInAnnotation YES, DerivationDescription with the finding and the
probability, and every source image in SourceImageSequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from highdicom.sc import SCImage
from PIL import Image
from pydicom.dataset import Dataset

from node.inference.engine import StudyResult
from node.results.drawing import Line, Style, font_unit, stack, text_band
from node.results.identity import AlgorithmInfo, NodeIdentity, add_study_level
from node.results.order import SourcePosition
from node.results.sc import (
    NOT_FOR_DIAGNOSIS,
    UNTRAINED_BANNER,
    rgb_secondary_capture,
    scale_band,
    source_reference,
)

SUMMARY_WIDTH = 1024
THUMBNAILS_HEIGHT = 900  # pixels shared by the rows of thumbnails (each row at least 250)
SUMMARY_SERIES_NUMBER = 992
SUMMARY_SERIES_DESCRIPTION = "AI summary mura-node - NOT FOR PRIMARY DIAGNOSIS"


@dataclass(frozen=True)
class SummaryContent:
    """What the summary image shows; ``thumbnails`` are blended heatmaps (H, W, 3) uint8, one per
    image in the order of ``result.images`` and ``positions``."""

    result: StudyResult
    algorithm: AlgorithmInfo
    positions: Sequence[SourcePosition]
    thumbnails: Sequence[np.ndarray]
    software: str  # e.g. "mura-node 0.1.0"

    def header(self) -> list[Line]:
        result = self.result
        finding = "ABNORMAL" if result.abnormal else "NORMAL"
        study = f"{result.study_type} study" if result.study_type else "study of unknown type"
        count = len(result.images)
        warning = [Line(UNTRAINED_BANNER, Style.WARNING)] if self.algorithm.untrained else []
        return [
            *warning,
            Line(f"AI result: {finding} ({study})", Style.TITLE),
            Line(
                f"Study probability {result.probability:.3f}, threshold {result.threshold:.3f} "
                f"(abnormal above it)"
            ),
            Line(f"{count} image{'s' if count != 1 else ''}, numbered in the source's order"),
        ]

    def footer(self) -> list[Line]:
        algorithm = self.algorithm
        checkpoints = [Line(f"Checkpoint: {item}", Style.MONO) for item in algorithm.checkpoints]
        if not checkpoints:
            checkpoints = [Line("Checkpoints: none (random weights)", Style.MONO)]
        return [
            Line(f"Algorithm: {algorithm.name} version {algorithm.version}"),
            *checkpoints,
            Line(f"AI summary by {self.software}"),
            Line(NOT_FOR_DIAGNOSIS, Style.TITLE),
        ]

    def caption(self, index: int) -> list[Line]:
        probability = self.result.images[index].probability
        return [
            Line(f"Image {index + 1}: probability {probability:.3f}"),
            Line(self.positions[index].describe()),
        ]


def _columns(count: int) -> int:
    return {1: 1, 2: 2, 3: 3, 4: 2}.get(count, 3 if count <= 9 else 4)


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled (down or up) to fit in width x height, aspect ratio kept."""
    scale = min(width / image.shape[1], height / image.shape[0])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def render_summary(content: SummaryContent, width: int = SUMMARY_WIDTH) -> np.ndarray:
    """The summary image: RGB uint8 (height, ``width``, 3), height as the content needs."""
    count = len(content.thumbnails)
    if count != len(content.result.images) or count != len(content.positions):
        raise ValueError("one thumbnail and one position per image result are needed")
    unit = font_unit(width)
    margin = unit
    columns = _columns(count)
    cell = (width - margin * (columns + 1)) // columns
    caption_unit = max(16, round(unit * (0.7 if columns > 1 else 1.0)))
    # Keep the whole page near the viewport's shape, so that its text stays legible at "fit".
    thumbnail_height = min(round(cell * 1.25), max(THUMBNAILS_HEIGHT // -(-count // columns), 250))
    rows = []
    for start in range(0, count, columns):
        cells = []
        for index in range(start, min(start + columns, count)):
            thumbnail = _fit(content.thumbnails[index], cell, thumbnail_height)
            caption = text_band(content.caption(index), cell, caption_unit)
            cells.append(stack([thumbnail, caption], cell))
        height = max(c.shape[0] for c in cells)
        row = np.zeros((height + margin, width, 3), np.uint8)
        for column, item in enumerate(cells):
            x = margin + column * (cell + margin)
            row[: item.shape[0], x : x + cell] = item
        rows.append(row)
    return stack(
        [
            text_band(content.header(), width, unit),
            *rows,
            text_band(content.footer(), width, unit),
            scale_band(width, unit),
        ],
        width,
    )


def build_summary(
    sources: Sequence[Dataset],
    rgb: np.ndarray,
    result: StudyResult,
    algorithm: AlgorithmInfo,
    identity: NodeIdentity,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = SUMMARY_SERIES_NUMBER,
    created: datetime | None = None,
) -> SCImage:
    """The summary Secondary Capture of one study.

    ``sources`` are the study's images' headers as cleaned by
    `node.results.sanitise.clean_source`, in the source's order (the first gives patient and
    study); ``rgb`` is `render_summary`'s image; ``created`` the time the result series was made
    (SeriesDate, SeriesTime; default now). Laterality is the images' own when they all agree on L
    or R, else empty (Type 2C). BurnedInAnnotation is YES for the reason `build_sc` gives."""
    if not sources:
        raise ValueError("a summary needs at least one source image")
    first = sources[0]
    lateralities = {
        str(s.get("ImageLaterality") or s.get("Laterality") or "").strip() for s in sources
    }
    laterality = lateralities.pop() if len(lateralities) == 1 else ""
    sc = rgb_secondary_capture(
        first,
        rgb,
        identity,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        laterality=laterality,  # a page of thumbnails has no patient orientation
        series_description=SUMMARY_SERIES_DESCRIPTION,
    )
    finding = "abnormal" if result.abnormal else "normal"
    sc.DerivationDescription = (
        f"Summary of {algorithm.display_name}: study {finding}, probability "
        f"{result.probability:.3f}, threshold {result.threshold:.3f}, {len(sources)} images with "
        "their class activation maps; AI rendering, not for primary diagnosis"
    )[:1024]
    sc.SourceImageSequence = [source_reference(source) for source in sources]
    add_study_level(sc, first, created or datetime.now())
    return sc
