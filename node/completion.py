"""When has a study fully arrived? A pure decision with the clock as an argument.

DICOM has no end-of-study signal, so the node uses the two rules the field's routers use:

* quiet period: no instance has arrived for ``quiet_period`` (Orthanc's StableAge, mercure);
* force timeout: ``force_after`` has passed since the study was opened, even if instances keep
  trickling in (so a sender that never stops cannot starve the study).

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


@dataclass(frozen=True)
class Completion:
    study_id: int
    reason: CompletionReason


def completion_reason(
    study: ArrivalTimes, now: datetime, policy: CompletionPolicy
) -> CompletionReason | None:
    """Why the study is complete at ``now``, or None while it is still receiving."""
    if now - study.last_received_at >= policy.quiet_period:
        return CompletionReason.QUIET
    if now - study.opened_at >= policy.force_after:
        return CompletionReason.FORCED
    return None


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
