"""When has a study fully arrived? A pure decision with the clock as an argument.

DICOM has no end-of-study signal, so the node uses the two rules the field's routers use:

* quiet period: no instance has arrived for ``quiet_period`` (Orthanc's StableAge, mercure);
* force timeout: ``force_after`` has passed since the study was opened, even if instances keep
  trickling in (so a sender that never stops cannot starve the study).

A quiet period can pass while an image of the study is still on the wire (a slow link, a large
image): the SCP then holds the study (``held_until``, a lease it renews while the data set is being
received, see node/receive/holds.py), and the quiet period does not complete a held study. The force
timeout ignores holds, so a sender that stalls for ever cannot keep a study open either.

A study is "opened" by its first instance, and opened again by an instance that arrives after it
was READY or later (the re-opened study is processed again), so both clocks restart at re-opening.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


class CompletionReason(enum.StrEnum):
    QUIET = "quiet"
    FORCED = "forced"


@dataclass(frozen=True)
class CompletionPolicy:
    quiet_period: timedelta
    force_after: timedelta

    @classmethod
    def from_seconds(cls, quiet_period_s: float, force_complete_s: float) -> CompletionPolicy:
        return cls(timedelta(seconds=quiet_period_s), timedelta(seconds=force_complete_s))


@dataclass(frozen=True)
class ArrivalTimes:
    """What the decision needs to know about one study that is still receiving."""

    study_id: int
    opened_at: datetime
    last_received_at: datetime
    held_until: datetime | None = None  # an image of the study is in flight until then, at least

    def held(self, now: datetime) -> bool:
        """Whether a hold is in force at ``now`` (a hold that has expired holds nothing)."""
        return self.held_until is not None and now < self.held_until


@dataclass(frozen=True)
class Completion:
    study_id: int
    reason: CompletionReason


def completion_reason(
    study: ArrivalTimes, now: datetime, policy: CompletionPolicy
) -> CompletionReason | None:
    """Why the study is complete at ``now``, or None while it is still receiving.

    QUIET when the quiet period has passed and no hold is in force; FORCED when the force timeout
    has passed, held or not. When both apply, QUIET (the study arrived whole, as far as we know)."""
    if now - study.last_received_at >= policy.quiet_period and not study.held(now):
        return CompletionReason.QUIET
    if now - study.opened_at >= policy.force_after:
        return CompletionReason.FORCED
    return None


def waits_for_image_in_flight(study: ArrivalTimes, now: datetime, policy: CompletionPolicy) -> bool:
    """True when only a hold keeps the study from completing at ``now``: its quiet period has
    passed, but an image of it is still being received."""
    return (
        now - study.last_received_at >= policy.quiet_period
        and study.held(now)
        and completion_reason(study, now, policy) is None
    )


def complete_studies(
    studies: Iterable[ArrivalTimes], now: datetime, policy: CompletionPolicy
) -> list[Completion]:
    """The studies that are complete at ``now``, oldest first."""
    done = []
    for study in sorted(studies, key=lambda s: (s.opened_at, s.study_id)):
        reason = completion_reason(study, now, policy)
        if reason is not None:
            done.append(Completion(study.study_id, reason))
    return done
