"""ROC curves and a calibration plot, as PNG (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from node.training.scores import StudyPrediction


def write_plots(predictions: Sequence[StudyPrediction], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    written = []
    figure, axis = plt.subplots(figsize=(6, 6))
    groups = {"overall": list(predictions)}
    for study_type in sorted({p.study_type for p in predictions}):
        groups[study_type] = [p for p in predictions if p.study_type == study_type]
    for name, subset in groups.items():
        labels = [p.label for p in subset]
        if len(set(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, [p.probability for p in subset])
        axis.plot(fpr, tpr, linewidth=2.5 if name == "overall" else 1, label=name)
    axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    axis.set(
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title="Study-level ROC",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    axis.legend(loc="lower right", fontsize=8)
    figure.savefig(out / "roc.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    written.append(out / "roc.png")

    truth = np.array([p.label for p in predictions])
    probabilities = np.array([p.probability for p in predictions])
    figure, axis = plt.subplots(figsize=(6, 6))
    if len(set(truth.tolist())) == 2:
        observed, predicted = calibration_curve(
            truth, probabilities, n_bins=min(10, max(2, len(truth) // 5))
        )
        axis.plot(predicted, observed, "o-", label="model")
    axis.plot([0, 1], [0, 1], "k:", linewidth=0.8, label="perfect calibration")
    axis.set(
        xlabel="mean predicted probability",
        ylabel="fraction abnormal",
        title="Calibration (studies)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    axis.legend(loc="upper left", fontsize=8)
    figure.savefig(out / "calibration.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    written.append(out / "calibration.png")
    return written
