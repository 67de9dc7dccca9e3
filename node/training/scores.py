"""Study-level evaluation as in the MURA paper: Cohen's kappa with its 95 % interval, AUROC,
sensitivity and specificity at the threshold, confusion matrix, per study type and overall
(scikit-learn computes the metrics), side by side with the paper's model kappas."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

from node.training.data import ImageRecord, kappa_interval

# Rajpurkar et al., MURA, final version: model kappas on the hidden test set.
PAPER_KAPPA = {
    "elbow": 0.710,
    "finger": 0.389,
    "forearm": 0.737,
    "hand": 0.851,
    "humerus": 0.600,
    "shoulder": 0.729,
    "wrist": 0.931,
    "overall": 0.705,
}


@dataclass(frozen=True)
class StudyPrediction:
    study: str
    study_type: str
    label: int
    probability: float


def study_predictions(
    records: Sequence[ImageRecord], probabilities: Sequence[float]
) -> list[StudyPrediction]:
    """Mean of each study's image probabilities (the paper's rule)."""
    grouped: dict[str, list[float]] = defaultdict(list)
    first: dict[str, ImageRecord] = {}
    for record, probability in zip(records, probabilities, strict=True):
        grouped[record.study].append(float(probability))
        first.setdefault(record.study, record)
    return [
        StudyPrediction(study, first[study].study_type, first[study].label, float(np.mean(values)))
        for study, values in grouped.items()
    ]


def score(
    labels: Sequence[int], probabilities: Sequence[float], threshold: float
) -> dict[str, Any]:
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    predicted = (p > threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    n = len(y)
    observed = (tn + tp) / n if n else float("nan")
    expected = (((tp + fp) * (tp + fn)) + ((tn + fn) * (tn + fp))) / n**2 if n else float("nan")
    kappa = float(cohen_kappa_score(y, predicted, labels=[0, 1])) if n else float("nan")
    if np.isnan(kappa):
        kappa = 0.0
    low, high = kappa_interval(kappa, observed, expected, n)
    return {
        "studies": n,
        "kappa": kappa,
        "kappa_95ci": [low, high],
        "auroc": float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else None,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "threshold": threshold,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def evaluate(
    predictions: Sequence[StudyPrediction], thresholds: Mapping[str, float]
) -> dict[str, Any]:
    """Per study type and overall; ``thresholds`` maps study types (and "default") to thresholds."""
    report: dict[str, Any] = {}
    default = thresholds.get("default", 0.5)
    for study_type in sorted({p.study_type for p in predictions}):
        subset = [p for p in predictions if p.study_type == study_type]
        report[study_type] = score(
            [p.label for p in subset],
            [p.probability for p in subset],
            thresholds.get(study_type, default),
        )
    decided = [p.probability > thresholds.get(p.study_type, default) for p in predictions]
    overall = score([p.label for p in predictions], [float(d) for d in decided], 0.5)
    overall["auroc"] = (
        float(roc_auc_score([p.label for p in predictions], [p.probability for p in predictions]))
        if len({p.label for p in predictions}) == 2
        else None
    )
    overall["threshold"] = "per study type"
    report["overall"] = overall
    for key, values in report.items():
        values["paper_kappa"] = PAPER_KAPPA.get(key)
    return report


def markdown_table(report: Mapping[str, Any]) -> str:
    lines = [
        "| study type | studies | kappa (95% CI) | paper kappa | AUROC | sensitivity | specificity |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, v in report.items():
        low, high = v["kappa_95ci"]
        auroc = "-" if v["auroc"] is None else f"{v['auroc']:.3f}"
        sens = "-" if v["sensitivity"] is None else f"{v['sensitivity']:.3f}"
        spec = "-" if v["specificity"] is None else f"{v['specificity']:.3f}"
        paper = "-" if v["paper_kappa"] is None else f"{v['paper_kappa']:.3f}"
        lines.append(
            f"| {key} | {v['studies']} | {v['kappa']:.3f} ({low:.3f} to {high:.3f}) | {paper} | {auroc} | {sens} | {spec} |"
        )
    return "\n".join(lines) + "\n"


def choose_thresholds(predictions: Sequence[StudyPrediction]) -> dict[str, float]:
    """Per study type, the threshold that maximises Cohen's kappa on these predictions (use a
    validation split, never the split that is reported)."""
    chosen = {}
    for study_type in sorted({p.study_type for p in predictions}):
        subset = [p for p in predictions if p.study_type == study_type]
        labels = [p.label for p in subset]
        if len(set(labels)) < 2:
            continue
        candidates = sorted({round(p.probability, 6) for p in subset})
        cuts = [(a + b) / 2 for a, b in itertools.pairwise(candidates)] or [0.5]
        best = max(
            cuts,
            key=lambda t: (
                score(labels, [p.probability for p in subset], t)["kappa"],
                -abs(t - 0.5),
            ),
        )
        chosen[study_type] = float(min(max(best, 1e-6), 1 - 1e-6))
    return chosen
