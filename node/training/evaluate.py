"""`mura-node evaluate`: a split through the engine, scored at study level.

PNG paths go through the training preprocessing, DICOM paths through the serving one (so an
operator can check a deployed node on local DICOM studies laid out like MURA); for a DICOM with a
PNG of the same name beside it, the report says how far the two inputs are apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from node.config import ModelConfig
from node.errors import UsageError
from node.inference.engine import InferenceEngine
from node.inference.imaging import dicom_file_to_tensor, png_file_to_tensor
from node.training.data import ImageRecord, read_split
from node.training.plots import write_plots
from node.training.scores import choose_thresholds, evaluate, markdown_table, study_predictions


def _tensor(path: Path, size: int) -> torch.Tensor:
    if path.suffix.lower() == ".png":
        return png_file_to_tensor(path, size)
    return dicom_file_to_tensor(path, size)


def predict_split(engine: InferenceEngine, records: list[ImageRecord]) -> list[float]:
    probabilities: list[float] = []
    batch = max(1, engine.batch_size)
    for start in range(0, len(records), batch):
        tensors = [_tensor(r.path, engine.input_size) for r in records[start : start + batch]]
        p, _ = engine.predict(torch.stack(tensors))
        probabilities.extend(float(v) for v in p)
    return probabilities


def parity(records: list[ImageRecord], size: int) -> dict[str, Any] | None:
    """For DICOM images with a PNG of the same name beside them: the largest input difference."""
    differences = []
    for record in records:
        png = record.path.with_suffix(".png")
        if record.path.suffix.lower() != ".png" and png.is_file():
            difference = (
                (dicom_file_to_tensor(record.path, size) - png_file_to_tensor(png, size))
                .abs()
                .max()
            )
            differences.append(float(difference))
    if not differences:
        return None
    return {"images": len(differences), "max_abs_difference": max(differences)}


def write_thresholds(card_path: Path, thresholds: dict[str, float]) -> None:
    """Replace the [thresholds] table of a model card (weights and hash untouched)."""
    kept, skipping = [], False
    for line in card_path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("["):
            skipping = line.strip() == "[thresholds]"
        if not skipping:
            kept.append(line)
    kept += ["", "[thresholds]", *[f"{k} = {v:.6f}" for k, v in sorted(thresholds.items())]]
    card_path.write_text("\n".join(kept) + "\n", encoding="utf-8")


def evaluate_split(
    cards: list[str],
    split_csv: Path,
    out: Path,
    root: Path | None = None,
    device: str = "auto",
    threshold_split: Path | None = None,
) -> dict[str, Any]:
    """Score the ensemble of ``cards`` on ``split_csv``; write report.md, report.json, roc.png and
    calibration.png to ``out``. With ``threshold_split``, per-study-type thresholds are first chosen
    on that (validation) split, never on the reported one, and written into the cards.

    Raises UsageError for the same split twice or a CSV that is not a MURA-layout split,
    CheckpointError for a card that cannot be used, OSError for an image or folder that cannot be
    read or written."""
    if threshold_split is not None and threshold_split.resolve() == split_csv.resolve():
        raise UsageError(
            f"--choose-thresholds-on {threshold_split}: thresholds must be chosen on another "
            "split than the one reported (--split), e.g. the validation split"
        )
    engine = InferenceEngine.from_config(ModelConfig(cards=tuple(cards), device=device))
    chosen = None
    if threshold_split is not None:
        tuning = read_split(threshold_split, root)
        chosen = choose_thresholds(study_predictions(tuning, predict_split(engine, tuning)))
        for card in engine.cards:
            write_thresholds(card.path, chosen)
        engine.thresholds.update(chosen)
    records = read_split(split_csv, root)
    predictions = study_predictions(records, predict_split(engine, records))
    thresholds = {t: engine.threshold_for(t) for t in {p.study_type for p in predictions}}
    report = evaluate(predictions, thresholds)
    out.mkdir(parents=True, exist_ok=True)
    preprocessing = parity(records, engine.input_size)
    summary = {
        "split": str(split_csv),
        "cards": cards,
        "chosen_thresholds": chosen,
        "parity": preprocessing,
        "studies": report,
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    text = (
        f"# Evaluation of {len(cards)} model(s) on {split_csv}\n\nStudy level. The paper's kappas are "
        "its model's on the hidden MURA test set, not on this split.\n\n" + markdown_table(report)
    )
    if chosen:
        text += f"\nThresholds chosen on {threshold_split}: {json.dumps(chosen)}\n"
    if preprocessing:
        text += (
            f"\nPNG/DICOM preprocessing parity over {preprocessing['images']} images: largest "
            f"difference {preprocessing['max_abs_difference']:.2e} in normalised input units.\n"
        )
    (out / "report.md").write_text(text)
    write_plots(predictions, out)
    return report
