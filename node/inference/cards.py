"""Model cards and checkpoints.

A checkpoint is two files side by side, usually in ``models/``:

- the weights, in safetensors (``.safetensors``; preferred) or a PyTorch state dict (``.pt``,
  loaded with ``torch.load(weights_only=True)``, which never unpickles arbitrary objects);
- a model card, TOML, that names the weights file and its SHA-256 and says what the model is:

```toml
name = "mura-densenet169"
version = "1"
architecture = "densenet169"      # the only one supported
input_size = 320
weights = "mura-densenet169-1.safetensors"   # relative to the card
sha256 = "<64 hex digits of the weights file>"

[normalisation]
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[training]       # free-form: data set, split, recipe, epochs, seed, date
[thresholds]     # optional: default = 0.5, and per study type (elbow = 0.45, ...)
[metrics]        # free-form: validation loss, kappa, AUROC, ...
```

Loading always verifies the hash and refuses a mismatch. ``pack_checkpoint`` turns a state dict
into such a pair (``mura-node model pack``).

This module imports PyTorch only where tensors are made (``read_state_dict``, ``load_weights``,
``pack_checkpoint``): ``verify_weights`` checks a checkpoint for ``serve``'s main process, which
never runs the model, without it (a safetensors header is read with the ``safetensors`` package
alone; a ``.pt`` file is opened by a short-lived child process).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import tomllib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.errors import CheckpointError
from node.profiles import MURA_STUDY_TYPES

if TYPE_CHECKING:
    import torch

ARCHITECTURE = "densenet169"
# The input a card describes by default: ImageNet normalisation (per RGB channel, of intensities
# in [0, 1]) and a square side in pixels. node/inference/imaging.py uses the same.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 320


@dataclass(frozen=True)
class ModelCard:
    path: Path
    name: str
    version: str
    weights: Path
    sha256: str
    architecture: str = ARCHITECTURE
    input_size: int = INPUT_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    thresholds: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "card": str(self.path),
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "input_size": self.input_size,
            "normalisation": {"mean": list(self.mean), "std": list(self.std)},
            "weights": str(self.weights),
            "sha256": self.sha256,
            "thresholds": self.thresholds,
            "training": self.training,
            "metrics": self.metrics,
        }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        while chunk := fp.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_card(path: Path) -> ModelCard:
    """Read and check a model card (not the weights)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"cannot read model card {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CheckpointError(
            f"model card {path} is not a text (TOML) file; give the card, not the weights"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise CheckpointError(f"model card {path} is not valid TOML: {exc}") from None

    def need(key: str, kind: type) -> Any:
        if key not in data:
            raise CheckpointError(f"model card {path}: missing key '{key}'")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise CheckpointError(f"model card {path}: '{key}' must be a {kind.__name__}")
        return data[key]

    architecture = data.get("architecture", ARCHITECTURE)
    if architecture != ARCHITECTURE:
        raise CheckpointError(f"model card {path}: architecture {architecture!r} is not supported")
    sha = need("sha256", str).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise CheckpointError(f"model card {path}: 'sha256' is not a SHA-256 hex digest")
    size = data.get("input_size", INPUT_SIZE)
    if not isinstance(size, int) or isinstance(size, bool) or not 32 <= size <= 2048:
        raise CheckpointError(f"model card {path}: 'input_size' must be an integer from 32 to 2048")
    norm = data.get("normalisation", {})
    mean = _triple(path, "normalisation.mean", norm.get("mean", list(IMAGENET_MEAN)))
    std = _triple(path, "normalisation.std", norm.get("std", list(IMAGENET_STD)))
    thresholds = data.get("thresholds", {})
    for key, value in thresholds.items():
        if key != "default" and key not in MURA_STUDY_TYPES:
            raise CheckpointError(f"model card {path}: unknown study type '{key}' in [thresholds]")
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1:
            raise CheckpointError(f"model card {path}: thresholds.{key} must be between 0 and 1")
    return ModelCard(
        path=path,
        name=need("name", str),
        version=str(data.get("version", "")) or need("version", str),
        weights=(path.parent / need("weights", str)).resolve(),
        sha256=sha,
        architecture=architecture,
        input_size=size,
        mean=mean,
        std=std,
        thresholds={k: float(v) for k, v in thresholds.items()},
        training=dict(data.get("training", {})),
        metrics=dict(data.get("metrics", {})),
    )


def _triple(path: Path, key: str, value: Any) -> tuple[float, float, float]:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise CheckpointError(f"model card {path}: '{key}' must be a list of 3 numbers")
    return (float(value[0]), float(value[1]), float(value[2]))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from safetensors or a plain state dict; never unpickles arbitrary objects."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
        raise CheckpointError(f"cannot read weights {path}: {reason}") from None
    if (
        isinstance(loaded, dict)
        and "state_dict" in loaded
        and isinstance(loaded["state_dict"], dict)
    ):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise CheckpointError(f"weights {path} are not a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}


def load_weights(card: ModelCard) -> dict[str, torch.Tensor]:
    """The card's weights, after checking their SHA-256 against the card."""
    _check_hash(card)
    return read_state_dict(card.weights)


def verify_weights(card: ModelCard) -> None:
    """Check, without importing PyTorch into this process, what ``load_weights`` checks: the
    weights file exists, has the card's SHA-256, and holds a state dict of tensors. Raises
    CheckpointError with ``load_weights``'s messages.

    A ``.safetensors`` file: its header is parsed (tensor names, dtypes, shapes, and byte ranges
    that must cover the file exactly) by the ``safetensors`` package, no tensor is read. Any
    other file (a PyTorch state dict): read by ``read_state_dict`` in a short-lived child
    process, so that PyTorch (about 290 MiB) never stays in the caller's memory."""
    _check_hash(card)
    path = card.weights
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as weights:
                list(weights.keys())
        except Exception as exc:
            raise CheckpointError(
                f"cannot read weights {path}: {exc.__class__.__name__}: {exc}"
            ) from None
        return
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        problem = child.submit(_state_dict_problem, path).result()
    if problem is not None:
        raise CheckpointError(problem)


def _state_dict_problem(path: Path) -> str | None:
    """In a child process: why ``read_state_dict(path)`` refuses the file, or None."""
    try:
        read_state_dict(path)
    except CheckpointError as exc:
        return str(exc)
    return None


def _check_hash(card: ModelCard) -> None:
    if not card.weights.is_file():
        raise CheckpointError(f"weights {card.weights} named by {card.path} do not exist")
    actual = sha256_of(card.weights)
    if actual != card.sha256:
        raise CheckpointError(
            f"weights {card.weights} have SHA-256 {actual}, but {card.path} says {card.sha256}; "
            "refusing to load them"
        )


def pack_checkpoint(
    state_dict: dict[str, torch.Tensor],
    directory: Path,
    *,
    name: str,
    version: str,
    input_size: int = INPUT_SIZE,
    thresholds: dict[str, float] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> ModelCard:
    """Write weights (safetensors) and a model card for them; return the card as loaded back."""
    from safetensors.torch import save_file

    from node.inference.model import MuraDenseNet

    try:
        MuraDenseNet().load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"the weights do not fit DenseNet-169 with one logit: {exc}"
        ) from None
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{version}"
    weights = directory / f"{stem}.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(weights))
    lines = [
        f"name = {json.dumps(name)}",
        f"version = {json.dumps(version)}",
        f"architecture = {json.dumps(ARCHITECTURE)}",
        f"input_size = {input_size}",
        f"weights = {json.dumps(weights.name)}",
        f"sha256 = {json.dumps(sha256_of(weights))}",
        "",
        "[normalisation]",
        f"mean = {list(IMAGENET_MEAN)}",
        f"std = {list(IMAGENET_STD)}",
    ]
    for table, values in (("training", training), ("thresholds", thresholds), ("metrics", metrics)):
        lines += ["", f"[{table}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in (values or {}).items()]
    card = directory / f"{stem}.toml"
    card.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_card(card)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
