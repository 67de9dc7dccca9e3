"""The release-triggered case of the completion rule: a study delivered only by released
associations of configured senders completes after the settle time; anything else waits for the
quiet period."""

from datetime import UTC, datetime, timedelta

from node.complete.completion import (
    ArrivalTimes,
    CompletionPolicy,
    CompletionReason,
    Delivery,
    completion_reason,
    released_at,
    waits_for_image_in_flight,
)
from node.states import AssociationEnding

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = CompletionPolicy.from_seconds(60, 900, ["ORTHANC", "ROUTER"], 5)
RELEASED = AssociationEnding.RELEASED


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def study(
    *deliveries: Delivery,
    senders: tuple[str, ...] = ("ORTHANC",),
    last: float = 10,
    held_until: float | None = None,
) -> ArrivalTimes:
    return ArrivalTimes(
        1,
        T0,
        at(last),
        None if held_until is None else at(held_until),
        deliveries,
        frozenset(senders),
    )


def released(seconds: float, title: str = "ORTHANC") -> Delivery:
    return Delivery(title, RELEASED, at(seconds))


def test_released_study_completes_after_the_settle_time() -> None:
    arrival = study(released(11))
    assert released_at(arrival, POLICY) == at(11)
    assert completion_reason(arrival, at(15.999), POLICY) is None
    assert completion_reason(arrival, at(16), POLICY) is CompletionReason.RELEASED


def test_settle_counts_from_the_last_release_of_several_associations() -> None:
    arrival = study(released(11), released(30, "ROUTER"), senders=("ORTHANC", "ROUTER"))
    assert completion_reason(arrival, at(34.9), POLICY) is None
    assert completion_reason(arrival, at(35), POLICY) is CompletionReason.RELEASED


def test_an_open_association_leaves_the_study_to_the_quiet_period() -> None:
    arrival = study(released(11), Delivery("ORTHANC"))
    assert released_at(arrival, POLICY) is None
    assert completion_reason(arrival, at(69), POLICY) is None
    assert completion_reason(arrival, at(70), POLICY) is CompletionReason.QUIET


def test_an_aborted_or_lost_association_leaves_the_study_to_the_quiet_period() -> None:
    for ending in (AssociationEnding.ABORTED, AssociationEnding.CLOSED):
        arrival = study(released(11), Delivery("ORTHANC", ending, at(12)))
        assert completion_reason(arrival, at(69), POLICY) is None
        assert completion_reason(arrival, at(70), POLICY) is CompletionReason.QUIET


def test_an_instance_from_another_sender_leaves_the_study_to_the_quiet_period() -> None:
    arrival = study(released(11), senders=("ORTHANC", "MODALITY"))
    assert completion_reason(arrival, at(69), POLICY) is None
    assert completion_reason(arrival, at(70), POLICY) is CompletionReason.QUIET


def test_no_recorded_association_or_no_configured_sender_means_the_quiet_period() -> None:
    assert completion_reason(study(), at(69), POLICY) is None
    unconfigured = CompletionPolicy.from_seconds(60, 900)
    assert completion_reason(study(released(11)), at(69), unconfigured) is None
    assert completion_reason(study(released(11)), at(70), unconfigured) is CompletionReason.QUIET


def test_a_delivery_from_a_title_no_longer_configured_means_the_quiet_period() -> None:
    arrival = study(released(11, "OLD_ROUTER"), senders=("ORTHANC",))
    assert completion_reason(arrival, at(69), POLICY) is None


def test_a_hold_keeps_a_released_study_open_until_it_lapses() -> None:
    arrival = study(released(11), held_until=40)
    assert completion_reason(arrival, at(39), POLICY) is None
    assert waits_for_image_in_flight(arrival, at(39), POLICY)
    assert completion_reason(arrival, at(40), POLICY) is CompletionReason.RELEASED


def test_the_force_timeout_still_completes_a_study_whose_association_stays_open() -> None:
    arrival = study(Delivery("ORTHANC"), last=890)
    assert completion_reason(arrival, at(899), POLICY) is None
    assert completion_reason(arrival, at(900), POLICY) is CompletionReason.FORCED


def test_quiet_is_named_when_the_quiet_period_has_passed_as_well() -> None:
    assert completion_reason(study(released(11)), at(70), POLICY) is CompletionReason.QUIET
