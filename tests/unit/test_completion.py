from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from node.complete.completion import (
    ArrivalTimes,
    CompletionPolicy,
    CompletionReason,
    complete_studies,
    completion_reason,
    waits_for_image_in_flight,
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


def held(opened: float, last: float, until: float | None) -> ArrivalTimes:
    return ArrivalTimes(
        1,
        T0 + timedelta(seconds=opened),
        T0 + timedelta(seconds=last),
        None if until is None else T0 + timedelta(seconds=until),
    )


def test_a_hold_keeps_the_quiet_period_from_completing_until_it_lapses() -> None:
    study = held(0, 10, 200)
    for at in (70, 150, 199.999):
        assert completion_reason(study, T0 + timedelta(seconds=at), POLICY) is None
        assert waits_for_image_in_flight(study, T0 + timedelta(seconds=at), POLICY)
    assert completion_reason(study, T0 + timedelta(seconds=200), POLICY) is CompletionReason.QUIET
    assert not waits_for_image_in_flight(study, T0 + timedelta(seconds=200), POLICY)


def test_a_hold_before_the_quiet_period_ends_changes_nothing() -> None:
    study = held(0, 10, 40)
    assert completion_reason(study, T0 + timedelta(seconds=69), POLICY) is None
    assert not waits_for_image_in_flight(study, T0 + timedelta(seconds=69), POLICY)
    assert completion_reason(study, T0 + timedelta(seconds=70), POLICY) is CompletionReason.QUIET


def test_the_force_timeout_completes_a_held_study() -> None:
    study = held(0, 10, 10_000)
    assert completion_reason(study, T0 + timedelta(seconds=899), POLICY) is None
    assert completion_reason(study, T0 + timedelta(seconds=900), POLICY) is CompletionReason.FORCED
    assert not waits_for_image_in_flight(study, T0 + timedelta(seconds=900), POLICY)


def test_complete_studies_skips_held_studies() -> None:
    now = T0 + timedelta(seconds=100)
    studies = [held(0, 10, 150), ArrivalTimes(2, T0, T0 + timedelta(seconds=10))]
    assert [c.study_id for c in complete_studies(studies, now, POLICY)] == [2]


seconds = st.floats(min_value=0, max_value=5_000, allow_nan=False)


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[ArrivalTimes, datetime, CompletionPolicy]:
    opened = draw(seconds)
    last = opened + draw(seconds)
    until = draw(st.none() | seconds)
    now = draw(seconds) + opened
    policy = CompletionPolicy(
        timedelta(seconds=draw(st.floats(min_value=0.001, max_value=1_000))),
        timedelta(seconds=draw(st.floats(min_value=0.001, max_value=5_000))),
    )
    study = ArrivalTimes(
        7,
        T0 + timedelta(seconds=opened),
        T0 + timedelta(seconds=last),
        None if until is None else T0 + timedelta(seconds=until),
    )
    return study, T0 + timedelta(seconds=now), policy


@given(arrivals())
def test_never_quiet_while_held(case: tuple[ArrivalTimes, datetime, CompletionPolicy]) -> None:
    study, now, policy = case
    if study.held(now):
        assert completion_reason(study, now, policy) is not CompletionReason.QUIET


@given(arrivals())
def test_forced_is_unaffected_by_holds(
    case: tuple[ArrivalTimes, datetime, CompletionPolicy],
) -> None:
    study, now, policy = case
    forced = now - study.opened_at >= policy.force_after
    reason = completion_reason(study, now, policy)
    # past the force timeout a study completes, held or not; before it, never FORCED
    assert (reason is not None) if forced else (reason is not CompletionReason.FORCED)
    # a hold only ever turns QUIET into waiting, or into FORCED once the force timeout passed
    unheld = completion_reason(replace(study, held_until=None), now, policy)
    if reason is not unheld:
        assert unheld is CompletionReason.QUIET and study.held(now)
        assert reason is (CompletionReason.FORCED if forced else None)


@given(arrivals())
def test_a_lapsed_hold_is_no_hold(case: tuple[ArrivalTimes, datetime, CompletionPolicy]) -> None:
    study, now, policy = case
    if not study.held(now):
        unheld = replace(study, held_until=None)
        assert completion_reason(study, now, policy) is completion_reason(unheld, now, policy)


@given(arrivals())
def test_waiting_for_an_image_means_only_the_hold_keeps_it_open(
    case: tuple[ArrivalTimes, datetime, CompletionPolicy],
) -> None:
    study, now, policy = case
    unheld = completion_reason(replace(study, held_until=None), now, policy)
    assert waits_for_image_in_flight(study, now, policy) == (
        completion_reason(study, now, policy) is None and unheld is CompletionReason.QUIET
    )
