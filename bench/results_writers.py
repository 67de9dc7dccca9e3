"""Cost of writing results per study, against reading the sources' headers in the same run.

    .venv/bin/python -m bench.results_writers [--images 3] [--repeat 20]

Prints the median time of each step and its ratio to reading the headers (dcmread,
stop_before_pixels), which every study needs anyway: cleaning the copied attributes
(node/results/sanitise.py), the SR, the heatmap banner, the summary image.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from node.inference.engine import ImageResult, StudyResult
from node.results.identity import AlgorithmInfo, NodeIdentity
from node.results.order import SourcePosition
from node.results.sanitise import clean_source
from node.results.sc import HeatmapCaption, annotate_heatmap
from node.results.sr import build_sr
from node.results.summary import SummaryContent, render_summary


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
    }
    baseline = median_s(steps["read headers (baseline)"], args.repeat)
    print(f"{args.images} images of RG3_UNCR.dcm, median of {args.repeat}")
    for name, step in steps.items():
        seconds = median_s(step, args.repeat)
        print(f"{name:36s} {seconds * 1000:8.2f} ms  {seconds / baseline:6.2f}x baseline")


if __name__ == "__main__":
    main()
