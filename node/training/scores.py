"""Study-level evaluation as in the MURA paper: Cohen's kappa with its 95 % interval, AUROC,
sensitivity and specificity at the threshold, confusion matrix, per study type and overall
(scikit-learn computes the metrics), side by side with the paper's model kappas.

Kappa's interval is a percentile bootstrap over studies (``BOOTSTRAP_RESAMPLES`` resamples with
replacement, seed ``BOOTSTRAP_SEED``, so a report is reproducible), the usual method in the MURA
literature: every resample's kappa lies in [-1, 1], so the interval does too, unlike the
large-sample normal approximation. Kappa is undefined (``None``, shown as "undefined") when chance
agreement is 1, i.e. labels and decisions are all the same single class, or there are no studies.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

from node.training.data import ImageRecord

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20170911  # fixed: the same predictions always get the same interval

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


def _kappas(labels: np.ndarray, decisions: np.ndarray) -> np.ndarray:
    """Cohen's kappa of each row of two (resamples, studies) 0/1 arrays; NaN where undefined
    (chance agreement 1). The same value as scikit-learn's cohen_kappa_score, vectorised."""
    n = labels.shape[1]
    observed = (labels == decisions).mean(axis=1)
    label_rate, decision_rate = labels.sum(axis=1) / n, decisions.sum(axis=1) / n
    expected = label_rate * decision_rate + (1 - label_rate) * (1 - decision_rate)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappas = (observed - expected) / (1 - expected)
    return np.where(np.isclose(expected, 1.0), np.nan, kappas)


def kappa_with_interval(
    labels: Sequence[int],
    decisions: Sequence[int],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float | None, tuple[float, float] | None]:
    """Cohen's kappa of 0/1 ``labels`` and ``decisions`` (one per study) and its 95 % percentile
    bootstrap interval over studies; ``(None, None)`` when kappa is undefined.

    Resamples whose kappa is undefined (all one class) are left out; the interval is ``None`` when
    none is left. Both bounds lie in [-1, 1]. Where a tiny sample's bootstrap distribution does
    not reach the estimate (a skewed distribution), the interval is widened to include it, so
    ``lower <= kappa <= upper`` always holds.
    """
    y = np.asarray(labels, dtype=int)
    d = np.asarray(decisions, dtype=int)
    if len(y) == 0 or np.isnan(_kappas(y[None, :], d[None, :])[0]):
        return None, None
    kappa = float(cohen_kappa_score(y, d, labels=[0, 1]))
    rows = np.random.default_rng(seed).integers(0, len(y), size=(resamples, len(y)))
    kappas = _kappas(y[rows], d[rows])
    kappas = kappas[~np.isnan(kappas)]
    if len(kappas) == 0:
        return kappa, None
    low, high = (float(v) for v in np.percentile(kappas, [2.5, 97.5]))
    return kappa, (max(-1.0, min(low, kappa)), min(1.0, max(high, kappa)))


def score(
    labels: Sequence[int], probabilities: Sequence[float], threshold: float
) -> dict[str, Any]:
    """Metrics of one group of studies decided at ``threshold`` (abnormal when probability >
    threshold): kappa (``None`` when undefined) with ``kappa_95ci`` (``[low, high]`` or ``None``),
    AUROC (``None`` with one class), sensitivity and specificity (``None`` without positives or
    negatives), and the confusion matrix."""
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    predicted = (p > threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    kappa, interval = kappa_with_interval(y.tolist(), predicted.tolist())
    return {
        "studies": len(y),
        "kappa": kappa,
        "kappa_95ci": None if interval is None else list(interval),
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
        if v["kappa"] is None:
            kappa = "undefined"
        elif v["kappa_95ci"] is None:
            kappa = f"{v['kappa']:.3f} (no interval)"
        else:
            kappa = f"{v['kappa']:.3f} ({v['kappa_95ci'][0]:.3f} to {v['kappa_95ci'][1]:.3f})"
        auroc = "-" if v["auroc"] is None else f"{v['auroc']:.3f}"
        sens = "-" if v["sensitivity"] is None else f"{v['sensitivity']:.3f}"
        spec = "-" if v["specificity"] is None else f"{v['specificity']:.3f}"
        paper = "-" if v["paper_kappa"] is None else f"{v['paper_kappa']:.3f}"
        lines.append(f"| {key} | {v['studies']} | {kappa} | {paper} | {auroc} | {sens} | {spec} |")
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
                float(
                    cohen_kappa_score(
                        labels, [int(p.probability > t) for p in subset], labels=[0, 1]
                    )
                ),
                -abs(t - 0.5),
            ),
        )
        chosen[study_type] = float(min(max(best, 1e-6), 1 - 1e-6))
    return chosen
