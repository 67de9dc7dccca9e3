from datetime import UTC, datetime, timedelta

from node.completion import (
    ArrivalTimes,
    CompletionPolicy,
    CompletionReason,
    complete_studies,
    completion_reason,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = CompletionPolicy(quiet_period=timedelta(seconds=60), force_after=timedelta(seconds=900))


def times(opened: float, last: float, study_id: int = 1) -> ArrivalTimes:
    return ArrivalTimes(study_id, T0 + timedelta(seconds=opened), T0 + timedelta(seconds=last))


def test_receiving_until_the_quiet_period_has_passed() -> None:
    study = times(0, 10)
    assert completion_reason(study, T0 + timedelta(seconds=69.999), POLICY) is None
    assert completion_reason(study, T0 + timedelta(seconds=70), POLICY) is CompletionReason.QUIET


def test_forced_when_instances_keep_arriving() -> None:
    study = times(0, 890)
    assert completion_reason(study, T0 + timedelta(seconds=899), POLICY) is None
    assert completion_reason(study, T0 + timedelta(seconds=900), POLICY) is CompletionReason.FORCED


def test_quiet_wins_when_both_apply() -> None:
    assert completion_reason(times(0, 0), T0 + timedelta(hours=1), POLICY) is CompletionReason.QUIET


def test_complete_studies_oldest_first_and_only_complete_ones() -> None:
    now = T0 + timedelta(seconds=1000)
    studies = [times(500, 990, 3), times(50, 900, 2), times(10, 995, 1), times(150, 950, 4)]
    result = complete_studies(studies, now, POLICY)
    assert [(c.study_id, c.reason) for c in result] == [
        (1, CompletionReason.FORCED),
        (2, CompletionReason.QUIET),
    ]
