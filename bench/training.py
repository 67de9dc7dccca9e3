"""Training throughput of the MURA recipe: images per second of optimisation steps.

Each step is the recipe's: forward of DenseNet-169 with its class activation maps, BCE weighted per
sample, backward, Adam. Inputs are ready tensors (random, 3 x SIZE x SIZE), so the figure is the
model's; the per-image cost of loading and augmenting a MURA-sized PNG is printed separately, to
size the DataLoader workers. On CUDA, fp32 and bf16 autocast (the recipe's mixed precision) are
compared, channels_last in both; the estimated epoch time is for MURA's 36,808 training images.

    .venv/bin/python -m bench.training                                   # CPU, batch 8 and 16
    python3 -m bench.training --device cuda --batches 8 32 64 --precisions fp32 bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from node.inference.model import MuraDenseNet
from node.training.data import ImageRecord, MuraImages

MURA_TRAIN_IMAGES = 36_808


def step_rate(device: torch.device, batch: int, size: int, precision: str, steps: int) -> float:
    torch.manual_seed(0)
    model = MuraDenseNet().to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    images = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    labels = (torch.rand(batch, device=device) > 0.5).float()
    weights = torch.rand(batch, device=device)
    autocast = precision == "bf16" and device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits, _ = model(images)
        loss = (bce(logits.float(), labels) * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def loading_ms(size: int) -> float:
    """Per image: read a 512 x 400 grayscale PNG, window, resize, flip and rotate (the recipe)."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        records = []
        rng = np.random.default_rng(0)
        for index in range(16):
            path = Path(tmp) / f"XR_WRIST/patient0/study1_positive/image{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (512, 400), dtype=np.uint8)).save(path)
            records.append(ImageRecord(path, "s", "wrist", 1))
        dataset = MuraImages(records, size, augment=True)
        dataset[0]
        start = time.perf_counter()
        for index in range(len(dataset)):
            dataset[index]
        return (time.perf_counter() - start) / len(dataset) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--precisions", nargs="+", default=["fp32"])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU x {os.cpu_count()}, {torch.get_num_threads()} threads"
    print(f"{name}, torch {torch.__version__}, input {args.size} x {args.size}, channels_last")
    print(
        f"loading + augmenting one 512 x 400 PNG: {loading_ms(args.size):.1f} ms (one DataLoader worker)"
    )
    print(f"{'precision':<9} {'batch':>5} {'train img/s':>12} {'MURA epoch (36,808 images)':>28}")
    for precision in args.precisions:
        for batch in args.batches:
            rate = step_rate(device, batch, args.size, precision, args.steps)
            minutes = MURA_TRAIN_IMAGES / rate / 60
            print(f"{precision:<9} {batch:>5} {rate:>12.1f} {minutes:>24.1f} min", flush=True)


if __name__ == "__main__":
    main()
