"""torchvision's DenseNet-169 on the CPU: contiguous against channels_last memory layout, and the
batch size that gives the most images per second (docs/performance.md, engine section), on
PyTorch's default threads or on ``--threads`` (1: what each of two workers gets on two cores).

    .venv/bin/python -m bench.cpu_layout [--threads 1] [--batches 1 2 4 8 16]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision


def rate(model: torch.nn.Module, batch: int, layout: torch.memory_format) -> float:
    images = torch.randn(batch, 3, 320, 320).contiguous(memory_format=layout)
    with torch.inference_mode():
        model(images)
        start = time.perf_counter()
        model(images)
        model(images)
    return 2 * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="0: PyTorch's default")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    contiguous = torchvision.models.densenet169(num_classes=1).eval()
    channels_last = (
        torchvision.models.densenet169(num_classes=1).eval().to(memory_format=torch.channels_last)
    )
    print(f"CPU, {torch.get_num_threads()} threads, 320 x 320, img/s (median-free: 2 timed calls)")
    print(f"{'batch':>5} {'contiguous':>11} {'channels_last':>14}")
    for batch in args.batches:
        print(
            f"{batch:>5} {rate(contiguous, batch, torch.contiguous_format):>11.1f} "
            f"{rate(channels_last, batch, torch.channels_last):>14.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
