"""Cost of writing results per study, against reading the sources' headers in the same run.

    .venv/bin/python -m bench.results_writers [--images 3] [--repeat 20]

Prints the median time of each step and its ratio to reading the headers (dcmread,
stop_before_pixels), which every study needs anyway: cleaning the copied attributes
(node/results/sanitise.py), the SR, the heatmap banner (its colour scale band is drawn once per
size, so from the second call on this row times the banner's text), the summary image (of
256-pixel thumbnails), and the whole result set of the study as the worker writes it
(`ResultSetWriter.write`: the SR, a heatmap SC per image and the summary image, built and written
durably to a temporary data directory, then removed), with the CPU time of each of its steps.
Then, alternating baseline and candidate call by call: the SR document built by highdicom from the whole content
tree (as before) against around the root container alone (`node.results.sr.document`), and the
heatmap blended as before (every pixel, the colour ramp gathered by index) against now (the
shown evidence only, the ramp interpolated by ``np.interp``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.inference.engine import ImageResult, StudyResult
from node.inference.imaging import dicom_file_to_inputs
from node.results.identity import AlgorithmInfo, NodeIdentity
from node.results.order import SourcePosition
from node.results.sanitise import clean_source
from node.results.sc import (
    HeatmapCaption,
    annotate_heatmap,
    blend_heatmap,
    colour_ramp,
    display_and_map,
    opacity,
    to_8_bits,
)
from node.results.sr import _ROOT, build_sr, document
from node.results.summary import SummaryContent, render_summary
from node.storage import FileStore
from node.work import result_set
from node.work.result_set import ResultSetWriter, StudyEvidence


def median_s(step: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    source = Path(get_testdata_file("RG3_UNCR.dcm"))
    paths = [source] * args.images
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    cleaned = [clean_source(h)[0] for h in headers]
    result = StudyResult(
        "wrist",
        0.6,
        0.5,
        True,
        tuple(
            ImageResult(0.6, np.random.default_rng(0).random((10, 10), np.float32)) for _ in paths
        ),
    )
    algorithm = AlgorithmInfo("MURA DenseNet-169", "1", ("c 1 " + "ab" * 32,), untrained=False)
    identity = NodeIdentity(device_uid=generate_uid(), ae_title="MURA_NODE")
    blended = np.zeros((1024, 1024, 3), np.uint8)
    caption = HeatmapCaption(
        abnormal=True,
        study_type="wrist",
        probability=0.6,
        algorithm=algorithm,
        position=SourcePosition.of(headers[0]),
    )
    content = SummaryContent(
        result=result,
        algorithm=algorithm,
        positions=[SourcePosition.of(h) for h in headers],
        thumbnails=[blended[:256, :256]] * len(paths),
        software="mura-node",
    )
    scratch = tempfile.TemporaryDirectory(prefix="results-writers-")
    store = FileStore(Path(scratch.name))
    store.prepare()
    writer = ResultSetWriter(store, algorithm, identity)
    # maps of normal noise: about a fifth of each heatmap above the 0.2 floor, as in the node's
    # own tests (the maps above are positive everywhere, every pixel coloured)
    maps = np.random.default_rng(3).normal(size=(len(paths), 10, 10)).astype(np.float32)
    evidence = StudyEvidence(
        headers,
        cleaned,
        [SourcePosition.of(h) for h in headers],
        [dicom_file_to_inputs(p)[1] for p in paths],
        StudyResult("wrist", 0.6, 0.5, True, tuple(ImageResult(0.6, cam) for cam in maps)),
    )
    steps: dict[str, Callable[[], object]] = {
        "read headers (baseline)": lambda: [dcmread(p, stop_before_pixels=True) for p in paths],
        "clean copied attributes": lambda: [clean_source(h) for h in headers],
        "build SR": lambda: build_sr(
            cleaned,
            result,
            algorithm,
            identity,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
        ),
        "banner + colour scale (per image)": lambda: annotate_heatmap(blended, caption),
        "summary image": lambda: render_summary(content),
        # written durably, then removed (the same unlinks as a failed study's)
        "whole result set (SR, SCs, summary)": lambda: writer.discard(
            writer.write(evidence, datetime.now(), None, False)
        ),
    }
    baseline = median_s(steps["read headers (baseline)"], args.repeat)
    print(f"{args.images} images of RG3_UNCR.dcm, median of {args.repeat}")
    for name, step in steps.items():
        seconds = median_s(step, args.repeat)
        print(f"{name:36s} {seconds * 1000:8.2f} ms  {seconds / baseline:6.2f}x baseline")
    print("the whole result set, step by step (CPU ms per study, median of each step)")
    for name, milliseconds in writing_steps(writer, evidence, args.repeat).items():
        print(f"    {name:32s} {milliseconds:8.2f} ms")
    sr = steps["build SR"]()
    assert isinstance(sr, Dataset)
    root = Dataset()
    for keyword in (*_ROOT, "ContentSequence"):
        if keyword in sr:
            root[keyword] = sr[keyword]
    kwargs: dict[str, Any] = {
        "series_instance_uid": generate_uid(),
        "series_number": 990,
        "sop_instance_uid": generate_uid(),
    }
    unit = np.random.default_rng(1).random((1024, 1024), np.float32)
    cam = np.random.default_rng(2).normal(size=(10, 10)).astype(np.float32)
    print("candidate against baseline, alternating, median of each")
    for name, before, after in (
        (
            "SR document: highdicom given the whole tree / the root alone",
            lambda: hd.sr.ComprehensiveSR(
                evidence=cleaned,
                content=root,
                instance_number=1,
                manufacturer=identity.manufacturer,
                is_complete=True,
                **kwargs,
            ),
            lambda: document(cleaned, root, identity, predecessor=None, **kwargs),
        ),
        (
            "heatmap blend 1024 px: as before / now",
            lambda: blend_every_pixel(unit, cam),
            lambda: blend_heatmap(unit, cam),
        ),
    ):
        a, b = alternating(before, after, args.repeat)
        print(f"{name:60s} {a * 1000:8.2f} ms -> {b * 1000:8.2f} ms  {a / b:5.2f}x faster")
    scratch.cleanup()


WRITING_STEPS = (
    "build_sr",
    "blend_heatmap",
    "annotate_heatmap",
    "build_sc",
    "render_summary",
    "build_summary",
)


def writing_steps(
    writer: ResultSetWriter, evidence: StudyEvidence, repeat: int
) -> dict[str, float]:
    """CPU milliseconds per study of each step of `ResultSetWriter.write` (the functions it
    calls, timed where node/work/result_set.py calls them; ``store <kind>``: encoding and the
    durable write of each object), summed over a study's calls, median over ``repeat`` studies."""
    timings: dict[str, list[float]] = {}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                timings.setdefault(name, []).append(time.process_time() - started)

        return step

    originals = {name: getattr(result_set, name) for name in WRITING_STEPS}
    store = ResultSetWriter._store
    try:
        for name, function in originals.items():
            setattr(result_set, name, timed(name, function))
        ResultSetWriter._store = lambda self, kind, ds: timed(f"store {kind}", store)(  # type: ignore[method-assign]
            self, kind, ds
        )
        for _ in range(repeat):
            writer.discard(writer.write(evidence, datetime.now(), None, False))
    finally:
        for name, function in originals.items():
            setattr(result_set, name, function)
        ResultSetWriter._store = store  # type: ignore[method-assign]
    return {
        name: statistics.median(values) * 1000 * (len(values) // repeat)
        for name, values in timings.items()
    }


def alternating(
    before: Callable[[], object], after: Callable[[], object], repeat: int
) -> tuple[float, float]:
    """Median seconds of ``before`` and of ``after``, called in turn ``repeat`` times each."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for step, into in ((before, times[0]), (after, times[1])):
            started = time.perf_counter()
            step()
            into.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def blend_every_pixel(unit: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """`blend_heatmap` as it was: every pixel blended, opacity 0 included (the baseline)."""
    base, heat = display_and_map(unit, cam)
    alpha = opacity(heat)[..., None]
    return to_8_bits(base[..., None] * (1 - alpha) + ramp_by_index(heat) * alpha)


def ramp_by_index(values: np.ndarray) -> np.ndarray:
    """`colour_ramp` as it was: knots gathered by index per pixel (the baseline)."""
    ramp = colour_ramp(np.linspace(0.0, 1.0, 5, dtype=np.float32))  # the ramp's five knots
    position = np.clip(values, 0.0, 1.0) * (len(ramp) - 1)
    low = np.floor(position).astype(int).clip(0, len(ramp) - 2)
    fraction = (position - low)[..., None]
    return (ramp[low] * (1 - fraction) + ramp[low + 1] * fraction).astype(np.float32)


if __name__ == "__main__":
    main()
