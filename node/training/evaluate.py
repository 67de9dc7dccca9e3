"""`mura-node evaluate`: a split of PNG images through the engine, scored at study level."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from node.config import ModelConfig
from node.engine import InferenceEngine
from node.imaging import png_file_to_tensor
from node.training.data import read_split
from node.training.metrics import evaluate, markdown_table, study_predictions


def evaluate_split(
    cards: list[str], split_csv: Path, out: Path, root: Path | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Score the ensemble of ``cards`` on ``split_csv``; write report.md and report.json to ``out``."""
    engine = InferenceEngine.from_config(ModelConfig(cards=tuple(cards), device=device))
    records = read_split(split_csv, root)
    probabilities: list[float] = []
    batch = max(1, engine.batch_size)
    for start in range(0, len(records), batch):
        tensors = [
            png_file_to_tensor(r.path, engine.input_size) for r in records[start : start + batch]
        ]
        p, _ = engine.predict(torch.stack(tensors))
        probabilities.extend(float(v) for v in p)
    predictions = study_predictions(records, probabilities)
    thresholds = {t: engine.threshold_for(t) for t in {p.study_type for p in predictions}}
    report = evaluate(predictions, thresholds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(
        json.dumps({"split": str(split_csv), "cards": cards, "studies": report}, indent=2)
    )
    table = markdown_table(report)
    (out / "report.md").write_text(
        f"# Evaluation of {len(cards)} model(s) on {split_csv}\n\nStudy-level, paper kappas from the "
        "MURA test set (the reported split is not that test set).\n\n" + table
    )
    return report
