"""Cohen's kappa and its percentile bootstrap interval on small and degenerate confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from node.training.scores import _kappas, kappa_with_interval, markdown_table, score


def studies(tn: int, fp: int, fn: int, tp: int) -> tuple[list[int], list[int]]:
    """Labels and decisions of a confusion matrix, one pair per study."""
    labels = [0] * (tn + fp) + [1] * (fn + tp)
    decisions = [0] * tn + [1] * fp + [0] * fn + [1] * tp
    return labels, decisions


@pytest.mark.parametrize(
    "matrix",
    [
        (0, 0, 1, 0),  # one study
        (1, 0, 0, 1),  # n = 2, perfect
        (0, 1, 1, 0),  # n = 2, perfect disagreement
        (1, 0, 1, 0),  # n = 2, decisions all normal
        (0, 1, 0, 1),  # labels one class each, decisions all abnormal
        (3, 0, 0, 4),  # perfect agreement
        (0, 3, 4, 0),  # kappa -1
        (1, 2, 1, 0),  # the finger: -0.5
        (5, 0, 2, 0),  # one decision class
        (3, 2, 1, 4),
        (40, 7, 9, 31),
    ],
)
def test_interval_stays_in_range_and_holds_the_estimate(
    matrix: tuple[int, int, int, int],
) -> None:
    labels, decisions = studies(*matrix)
    kappa, interval = kappa_with_interval(labels, decisions)
    if len(set(labels)) == 1 and len(set(decisions)) == 1 and labels[0] == decisions[0]:
        assert kappa is None and interval is None
        return
    assert kappa == pytest.approx(cohen_kappa_score(labels, decisions, labels=[0, 1]))
    assert kappa is not None and -1 <= kappa <= 1
    if interval is not None:
        low, high = interval
        assert -1 <= low <= kappa <= high <= 1


@pytest.mark.parametrize("matrix", [(4, 0, 0, 0), (0, 0, 0, 3), (1, 0, 0, 0)])
def test_kappa_is_undefined_when_everything_is_one_class(
    matrix: tuple[int, int, int, int],
) -> None:
    labels, decisions = studies(*matrix)
    assert kappa_with_interval(labels, decisions) == (None, None)
    result = score(labels, [float(d) for d in decisions], 0.5)
    assert result["kappa"] is None and result["kappa_95ci"] is None
    result["paper_kappa"] = None
    assert "| undefined |" in markdown_table({"hand": result})


def test_no_studies_is_undefined() -> None:
    assert kappa_with_interval([], []) == (None, None)


def test_perfect_agreement_has_a_point_interval_and_the_normal_approximation_case_stays_bounded() -> (
    None
):
    assert kappa_with_interval(*studies(3, 0, 0, 4)) == (1.0, (1.0, 1.0))
    # 4 studies, kappa -0.5: the normal approximation gave (-1.7, 0.7).
    kappa, interval = kappa_with_interval(*studies(1, 2, 1, 0))
    assert kappa == pytest.approx(-0.5)
    assert interval is not None and interval[0] >= -1


def test_the_interval_is_reproducible_and_narrows_with_more_studies() -> None:
    small = kappa_with_interval(*studies(3, 2, 1, 4))
    assert small == kappa_with_interval(*studies(3, 2, 1, 4))
    large = kappa_with_interval(*studies(30, 20, 10, 40))
    assert small[0] == pytest.approx(large[0])
    assert small[1] is not None and large[1] is not None
    assert large[1][1] - large[1][0] < small[1][1] - small[1][0]


def test_vectorised_kappa_matches_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (50, 9))
    decisions = rng.integers(0, 2, (50, 9))
    for row, value in zip(range(50), _kappas(labels, decisions), strict=True):
        if np.isnan(value):
            assert len(set(labels[row])) == len(set(decisions[row])) == 1
        else:
            assert value == pytest.approx(cohen_kappa_score(labels[row], decisions[row]))
