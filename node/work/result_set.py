"""Writing one study's result set durably to ``results/``: the SR, a heatmap SC per image, the
summary image and, when a destination takes them, a GSPS per grayscale image.

All objects of one call share the SeriesDate and SeriesTime ``created`` and the study-level
attributes of `node.results.identity.add_study_level`; images are numbered in the source's order.
A failure removes what the call had written, so a study never has half a result set on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node import __version__
from node.config import Config
from node.inference.engine import InferenceEngine, StudyResult
from node.results.gsps import build_gsps, label
from node.results.identity import AlgorithmInfo, NodeIdentity, add_study_level
from node.results.order import SourcePosition
from node.results.sc import HeatmapCaption, annotate_heatmap, blend_heatmap, build_sc
from node.results.sr import build_sr
from node.results.summary import SummaryContent, build_summary, render_summary
from node.states import ResultKind
from node.storage import FileStore
from node.work.processing import ResultFile

ALGORITHM_NAME = "MURA DenseNet-169"


def node_identity(config: Config) -> NodeIdentity:
    """The node as a device (the results' Contributing Equipment): a UID that stays the same for the same AE title."""
    return NodeIdentity(
        device_uid=generate_uid(entropy_srcs=["mura-node device", config.dicom.ae_title]),
        ae_title=config.dicom.ae_title,
    )


def algorithm_info(inference: InferenceEngine) -> AlgorithmInfo:
    """The algorithm the results name: its cards' names, versions and hashes, or untrained."""
    checkpoints = tuple(f"{c.name} {c.version} sha256:{c.sha256}" for c in inference.cards)
    version = "+".join(c.version for c in inference.cards) or f"untrained-{__version__}"
    return AlgorithmInfo(ALGORITHM_NAME, version, checkpoints, untrained=inference.untrained)


@dataclass(frozen=True)
class StudyEvidence:
    """What a study's results are built from, every list in the source's order (one item per
    analysed image): ``headers`` as received, ``sources`` their cleaned copies
    (node/results/sanitise.py), ``positions`` the source's numbering, ``displays`` the display
    images (display values in [0, 1], float32, H x W or H x W x 3; node/inference/imaging.py) and
    ``result`` the engine's probabilities and maps."""

    headers: list[Dataset]
    sources: list[Dataset]
    positions: list[SourcePosition]
    displays: list[np.ndarray]
    result: StudyResult


class ResultSetWriter:
    """Builds a study's result objects with highdicom and writes them to ``store``."""

    def __init__(self, store: FileStore, algorithm: AlgorithmInfo, identity: NodeIdentity) -> None:
        self.store = store
        self.algorithm = algorithm
        self.identity = identity

    def write(
        self,
        evidence: StudyEvidence,
        created: datetime,
        predecessor: Dataset | None,
        presentation_states: bool,
    ) -> list[ResultFile]:
        """Write the SR (naming ``predecessor``, the study's previous SR, if any), the heatmap
        SCs, the summary image and, when ``presentation_states``, the GSPSs; return them in that
        order. Raises what a writer raises, after removing the files already written."""
        written: list[ResultFile] = []
        try:
            self._write(evidence, created, predecessor, presentation_states, written)
        except BaseException:
            self.discard(written)
            raise
        return written

    def discard(self, written: list[ResultFile]) -> None:
        """Remove result files that will not be recorded."""
        for item in written:
            self.store.remove(item.file_path)

    def _write(
        self,
        evidence: StudyEvidence,
        created: datetime,
        predecessor: Dataset | None,
        presentation_states: bool,
        written: list[ResultFile],
    ) -> None:
        sources, result = evidence.sources, evidence.result
        sr = build_sr(
            sources,
            result,
            self.algorithm,
            self.identity,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            predecessor=predecessor,
        )
        add_study_level(sr, sources[0], created)
        written.append(self._store(ResultKind.SR, sr))
        series = generate_uid()
        blends = []
        for index, (source, position, display, image) in enumerate(
            zip(sources, evidence.positions, evidence.displays, result.images, strict=True)
        ):
            blended = blend_heatmap(display, image.cam)
            blends.append(blended)
            caption = HeatmapCaption(
                result.abnormal, result.study_type, image.probability, self.algorithm, position
            )
            sc = build_sc(
                source,
                annotate_heatmap(blended, caption),
                self.identity,
                series_instance_uid=series,
                sop_instance_uid=generate_uid(),
                instance_number=index + 1,
                probability=image.probability,
                algorithm_name=self.algorithm.display_name,
                created=created,
            )
            written.append(self._store(ResultKind.SC, sc))
        page = SummaryContent(
            result, self.algorithm, evidence.positions, blends, f"mura-node {__version__}"
        )
        summary_image = build_summary(
            sources,
            render_summary(page),
            result,
            self.algorithm,
            self.identity,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            created=created,
        )
        written.append(self._store(ResultKind.SUMMARY, summary_image))
        if presentation_states:
            self._presentation_states(evidence, created, written)

    def _presentation_states(
        self, evidence: StudyEvidence, created: datetime, written: list[ResultFile]
    ) -> None:
        """Write a GSPS per grayscale image, each added to ``written`` as soon as it is on disk
        (so that a failure removes it with the rest)."""
        result = evidence.result
        series = generate_uid()
        for index, (header, source, image) in enumerate(
            zip(evidence.headers, evidence.sources, result.images, strict=True)
        ):
            text = label(
                result.abnormal, result.study_type, image.probability, self.algorithm.untrained
            )
            gsps = build_gsps(
                header,
                source,
                image.cam,
                text,
                self.identity,
                series_instance_uid=series,
                sop_instance_uid=generate_uid(),
                instance_number=index + 1,
                created=created,
            )
            if gsps is not None:
                written.append(self._store(ResultKind.GSPS, gsps))

    def _store(self, kind: ResultKind, ds: Dataset) -> ResultFile:
        """Write a result object durably to results/ and describe it for the database."""
        return ResultFile(
            kind, str(ds.SOPClassUID), str(ds.SOPInstanceUID), self.store.write_result(ds)
        )
