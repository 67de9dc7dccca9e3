"""The model on the CPU beside other work: why worker processes share the cores out.

``InferenceEngine.predict`` on ready tensors (3 images of 320 x 320, one study, untrained
DenseNet-169), ``--calls`` calls in a row, timed:

- with PyTorch's default threads (one per core) on an otherwise idle machine: the bare engine of
  bench/pipeline.py;
- the same while one other process keeps one core busy ``duty`` of the time (25 %, 50 %, 100 %,
  in 20 ms periods), as the node's result writing, receiving and delivery do beside the model;
- with one thread, alone: what each of ``cores`` worker processes gets with ``model.cpu_threads =
  0`` and ``worker.processes`` = the number of cores (node/work/worker.py
  `cpu_threads_per_worker`).

Printed: images per second, CPU seconds of this process per image, and each against the first
row (same run).

    .venv/bin/python -m bench.cpu_sharing
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from node.config import ModelConfig
from node.inference.engine import InferenceEngine

BUSY = """
import sys, time
duty = float(sys.argv[1])
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < duty * 0.02:
        pass
    time.sleep((1 - duty) * 0.02)
"""


def measure(engine: InferenceEngine, images: torch.Tensor, calls: int) -> tuple[float, float]:
    """Images per second and CPU seconds of this process per image, over ``calls`` calls."""
    engine.predict(images)  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        engine.predict(images)
    count = calls * images.shape[0]
    return count / (time.perf_counter() - wall), (time.process_time() - cpu) / count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=8, help="timed calls per row (default 8)")
    args = parser.parse_args()
    engine = InferenceEngine.from_config(ModelConfig(allow_untrained=True, device="cpu"))
    images = torch.randn(3, 3, engine.input_size, engine.input_size)
    default_threads = torch.get_num_threads()
    rows: list[tuple[str, float, float]] = []
    rows.append((f"{default_threads} threads, alone", *measure(engine, images, args.calls)))
    for duty in (0.25, 0.5, 1.0):
        busy = subprocess.Popen([sys.executable, "-c", BUSY, str(duty)])
        try:
            time.sleep(0.3)
            label = f"{default_threads} threads, one core {duty:.0%} busy"
            rows.append((label, *measure(engine, images, args.calls)))
        finally:
            busy.kill()
            busy.wait()
    torch.set_num_threads(1)
    rows.append(("1 thread, alone", *measure(engine, images, args.calls)))
    torch.set_num_threads(default_threads)
    print(f"InferenceEngine.predict, 3 images of {engine.input_size} px per call, CPU")
    print(f"{'':36s} {'img/s':>7s} {'vs first':>9s} {'CPU s/img':>10s} {'vs first':>9s}")
    base_rate, base_cpu = rows[0][1], rows[0][2]
    for label, rate, cpu in rows:
        print(
            f"{label:36s} {rate:7.2f} {rate / base_rate:8.2f}x {cpu:10.3f} {cpu / base_cpu:8.2f}x"
        )


if __name__ == "__main__":
    main()
