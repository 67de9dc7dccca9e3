"""The retry policy: back-off, cap and dead letter (node/deliver/retry.py), as the dispatcher and the
`serve` supervisor use it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.config import DispatchConfig
from node.deliver.retry import Retry
from node.operate.service import RAN_LONG_S, RESTART

NOW = datetime(2024, 1, 1, tzinfo=UTC)

# Delays from a microsecond to a day, as the configuration allows any positive number of seconds.
delays = st.integers(min_value=1, max_value=86_400 * 10**6).map(
    lambda us: timedelta(microseconds=us)
)
policies = st.builds(
    Retry, delays, delays, st.one_of(st.none(), st.integers(min_value=1, max_value=50))
)
attempts = st.integers(min_value=-3, max_value=5_000)


def test_delay_doubles_from_the_first_up_to_the_cap() -> None:
    retry = Retry.of_seconds(10.0, 900.0, 8)
    assert [retry.delay(n).total_seconds() for n in range(1, 10)] == [
        10,
        20,
        40,
        80,
        160,
        320,
        640,
        900,
        900,
    ]


def test_delay_before_any_failure_is_the_first() -> None:
    retry = Retry.of_seconds(10.0, 900.0)
    assert retry.delay(0) == retry.delay(-1) == timedelta(seconds=10)


def test_a_cap_below_the_first_delay_is_every_delay() -> None:
    retry = Retry.of_seconds(30.0, 5.0)
    assert {retry.delay(n) for n in range(0, 6)} == {timedelta(seconds=5)}


def test_dead_exactly_at_max_attempts() -> None:
    retry = Retry.of_seconds(10.0, 900.0, 3)
    assert [retry.is_exhausted(n) for n in (0, 1, 2, 3, 4)] == [False, False, False, True, True]
    assert retry.next_attempt_at(2, NOW) == NOW + timedelta(seconds=20)
    assert retry.next_attempt_at(3, NOW) is None


def test_one_attempt_is_dead_at_the_first_failure() -> None:
    assert Retry.of_seconds(1.0, 1.0, 1).next_attempt_at(1, NOW) is None


def test_without_max_attempts_it_never_gives_up() -> None:
    retry = Retry.of_seconds(1.0, 60.0)
    assert not retry.is_exhausted(10**9)
    assert retry.next_attempt_at(10**9, NOW) == NOW + timedelta(seconds=60)


def test_huge_attempt_counts_stay_at_the_cap() -> None:
    retry = Retry(timedelta(days=900_000_000), timedelta(days=999_999_999))
    assert retry.delay(10**12) == timedelta(days=999_999_999)


@pytest.mark.parametrize(
    ("first", "cap", "max_attempts"),
    [(0.0, 60.0, None), (-1.0, 60.0, 3), (1.0, 0.0, 3), (1.0, 60.0, 0), (1.0, 60.0, -2)],
)
def test_invalid_policies_are_refused(first: float, cap: float, max_attempts: int | None) -> None:
    with pytest.raises(ValueError):
        Retry.of_seconds(first, cap, max_attempts)


def test_the_policy_is_a_frozen_value() -> None:
    retry = Retry.of_seconds(10.0, 900.0, 8)
    assert retry == Retry(timedelta(seconds=10), timedelta(seconds=900), 8)
    assert hash(retry) == hash(Retry.of_seconds(10.0, 900.0, 8))
    with pytest.raises(AttributeError):
        retry.max_attempts = 9  # type: ignore[misc]


@given(policies, attempts)
def test_delay_is_never_negative_and_never_past_the_cap(retry: Retry, n: int) -> None:
    delay = retry.delay(n)
    assert timedelta(0) < delay <= retry.cap


@given(policies, attempts, attempts)
def test_delay_is_monotone_non_decreasing(retry: Retry, a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert retry.delay(low) <= retry.delay(high)


@given(policies, st.integers(min_value=1, max_value=5_000))
def test_delay_is_the_cap_or_first_times_a_power_of_two(retry: Retry, n: int) -> None:
    delay = retry.delay(n)
    if delay != retry.cap:
        assert delay < retry.cap
        assert delay / retry.first == pytest.approx(2 ** (n - 1), rel=1e-6, abs=1e-6)


@given(policies, attempts)
def test_dead_exactly_from_max_attempts_on(retry: Retry, n: int) -> None:
    due = retry.next_attempt_at(n, NOW)
    dead = retry.max_attempts is not None and n >= retry.max_attempts
    assert retry.is_exhausted(n) is dead
    assert (due is None) is dead
    if due is not None:
        assert due == NOW + retry.delay(n)


def test_the_default_dispatch_back_off() -> None:
    settings = DispatchConfig()
    retry = Retry.of_seconds(settings.first_retry_s, settings.max_retry_s, settings.max_attempts)
    assert (settings.first_retry_s, settings.max_retry_s, settings.max_attempts) == (10, 900, 8)
    # dead at the 8th failure, after waits of 10, 20 ... 640 s: some 21 minutes in all
    waits = [retry.next_attempt_at(n, NOW) for n in range(1, 9)]
    assert waits[-1] is None
    assert sum((due - NOW for due in waits[:-1] if due), timedelta()) == timedelta(seconds=1270)


def test_the_supervisor_restarts_after_1_2_4_up_to_60_seconds() -> None:
    # As `serve` backed off before the policy was a value: the delay after a quick death is the
    # one before, doubled, at most 60 s; a child that ran RAN_LONG_S or more starts again at 1 s.
    assert RAN_LONG_S == 60.0
    previous = 0.5
    for deaths in range(1, 40):
        expected = min(60.0, previous * 2)
        assert RESTART.delay(deaths).total_seconds() == expected
        previous = expected
    assert not RESTART.is_exhausted(10**6)
