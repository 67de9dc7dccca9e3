"""`mura-node train`: the MURA paper's recipe on the node's own preprocessing and model.

DenseNet-169 (node/inference/model.py), input ``image_size`` (320 in the paper), ImageNet normalisation
(node/inference/imaging.py), random horizontal flips and rotations up to 30 degrees, binary cross-entropy
weighted per study type from the training set's image counts (node/training/data.py), Adam (lr
1e-4, betas 0.9/0.999), batch 8, learning rate divided by 10 when the validation loss does not
improve after an epoch, a checkpoint per epoch with its validation loss, and the ``ensemble`` best
epochs packed as checkpoints with model cards ready for ``model.cards``.

Initialisation: ImageNet weights from a local file (``imagenet``) or torchvision's cache when
present; otherwise random, with a warning. Nothing is ever downloaded. Training resumes from
``out/state.pt`` (read with weights_only) when it exists.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from node.inference.cards import ModelCard, pack_checkpoint
from node.inference.engine import resolve_device
from node.inference.imaging import INPUT_SIZE
from node.inference.model import MuraDenseNet
from node.training.data import MuraImages, loss_weights, read_split

log = logging.getLogger(__name__)
IMAGENET_FILE = "densenet169-b2777c0a.pth"


@dataclass(frozen=True)
class TrainSettings:
    train_csv: Path
    valid_csv: Path
    out: Path
    root: Path | None = None
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 1e-4
    image_size: int = INPUT_SIZE
    workers: int = 0
    seed: int = 0
    imagenet: Path | None = None
    device: str = "auto"
    ensemble: int = 5
    name: str = "mura-densenet169"
    precision: str = "bf16"  # on CUDA: "bf16" autocast (mixed precision) or "fp32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def imagenet_features(path: Path | None) -> dict[str, torch.Tensor] | None:
    """DenseNet-169 ImageNet feature weights from ``path`` or torchvision's cache, never fetched."""
    candidates = [path] if path else [Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE]
    for candidate in candidates:
        if candidate is not None and candidate.is_file():
            state = torch.load(candidate, map_location="cpu", weights_only=True)
            legacy = re.compile(
                r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
            )
            fixed = {}
            for key, value in state.items():
                match = legacy.match(key)
                fixed[match.group(1) + match.group(2) if match else key] = value
            return {
                k.removeprefix("features."): v
                for k, v in fixed.items()
                if k.startswith("features.")
            }
    if path is not None:
        raise FileNotFoundError(f"ImageNet weights {path} do not exist")
    return None


def train(settings: TrainSettings) -> list[ModelCard]:
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    train_records = read_split(settings.train_csv, settings.root)
    valid_records = read_split(settings.valid_csv, settings.root)
    weights = loss_weights(train_records)
    model = MuraDenseNet()
    features = imagenet_features(settings.imagenet)
    if features is None:
        log.warning(
            "no ImageNet weights found (give --imagenet PATH); starting from random weights"
        )
    else:
        model.features.load_state_dict(features)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=0.1, patience=0
    )
    settings.out.mkdir(parents=True, exist_ok=True)
    epochs_dir = settings.out / "epochs"
    epochs_dir.mkdir(exist_ok=True)
    state_path, log_path = settings.out / "state.pt", settings.out / "log.jsonl"
    history: list[dict[str, float]] = []
    start_epoch = 1
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = [dict(h) for h in json.loads(str(state["history"]))]
        start_epoch = int(state["epoch"]) + 1
        torch.set_rng_state(state["rng"])
        log.info("resuming after epoch %d", start_epoch - 1)
    generator = torch.Generator().manual_seed(settings.seed + start_epoch)
    train_loader = DataLoader(
        MuraImages(train_records, settings.image_size, augment=True),
        batch_size=settings.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=settings.workers,
        pin_memory=device.type == "cuda",
    )
    valid_loader = DataLoader(
        MuraImages(valid_records, settings.image_size),
        batch_size=settings.batch_size * 2,
        num_workers=settings.workers,
    )
    positive = torch.tensor([weights.get(r.study_type, (0.5, 0.5))[0] for r in train_records])
    negative = torch.tensor([weights.get(r.study_type, (0.5, 0.5))[1] for r in train_records])
    valid_weights = loss_weights(valid_records)
    v_positive = torch.tensor(
        [valid_weights.get(r.study_type, (0.5, 0.5))[0] for r in valid_records]
    )
    v_negative = torch.tensor(
        [valid_weights.get(r.study_type, (0.5, 0.5))[1] for r in valid_records]
    )
    bce = nn.BCEWithLogitsLoss(reduction="none")
    amp = device.type == "cuda" and settings.precision == "bf16"
    for epoch in range(start_epoch, settings.epochs + 1):
        model.train()
        started, seen, total = time.perf_counter(), 0, 0.0
        for step, (images, labels, index) in enumerate(train_loader, start=1):
            images, labels = images.to(device), labels.float().to(device)
            sample_weight = torch.where(
                labels > 0.5, positive[index].to(device), negative[index].to(device)
            )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits, _ = model(images)
            loss = (bce(logits.float(), labels) * sample_weight).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(labels)
            total += float(loss.detach()) * len(labels)
            if step % 10 == 0 or step == len(train_loader):
                rate = seen / (time.perf_counter() - started)
                print(
                    f"epoch {epoch} step {step}/{len(train_loader)} loss {total / seen:.4f} {rate:.1f} img/s",
                    flush=True,
                )
        valid_loss = _validation_loss(model, valid_loader, bce, v_positive, v_negative, device, amp)
        scheduler.step(valid_loss)
        record = {
            "epoch": epoch,
            "train_loss": total / max(seen, 1),
            "valid_loss": valid_loss,
            "learning_rate": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        with log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(
            f"epoch {epoch}: train loss {record['train_loss']:.4f}, valid loss {valid_loss:.4f}",
            flush=True,
        )
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            str(epochs_dir / f"epoch-{epoch:03d}.safetensors"),
        )
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": json.dumps(history),
                "rng": torch.get_rng_state(),
            },
            state_path,
        )
    return _pack_best(settings, history)


@torch.inference_mode()
def _validation_loss(
    model: MuraDenseNet,
    loader: DataLoader,
    bce: nn.Module,
    positive: torch.Tensor,
    negative: torch.Tensor,
    device: torch.device,
    amp: bool,
) -> float:
    model.eval()
    total, count = 0.0, 0
    for images, labels, index in loader:
        labels = labels.float().to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, _ = model(images.to(device))
        weight = torch.where(labels > 0.5, positive[index].to(device), negative[index].to(device))
        total += float((bce(logits.float(), labels) * weight).sum())
        count += len(labels)
    return total / max(count, 1)


def _pack_best(settings: TrainSettings, history: list[dict[str, float]]) -> list[ModelCard]:
    from safetensors.torch import load_file

    best = sorted(history, key=lambda h: h["valid_loss"])[: settings.ensemble]
    cards = []
    for rank, record in enumerate(best, start=1):
        epoch = int(record["epoch"])
        state = load_file(str(settings.out / "epochs" / f"epoch-{epoch:03d}.safetensors"))
        cards.append(
            pack_checkpoint(
                state,
                settings.out / "models",
                name=settings.name,
                version=f"epoch{epoch:03d}",
                input_size=settings.image_size,
                training={
                    "data": str(settings.train_csv),
                    "validation": str(settings.valid_csv),
                    "recipe": f"MURA: Adam {settings.learning_rate:g}, batch {settings.batch_size}, "
                    "flips + rotations up to 30 degrees, BCE weighted per study type",
                    "epoch": epoch,
                    "ensemble_rank": rank,
                    "seed": settings.seed,
                },
                metrics={"valid_loss": record["valid_loss"], "train_loss": record["train_loss"]},
            )
        )
    (settings.out / "settings.json").write_text(
        json.dumps({k: str(v) for k, v in asdict(settings).items()}, indent=2)
    )
    return cards
