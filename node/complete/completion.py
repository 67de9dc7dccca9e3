"""When has a study fully arrived? A pure decision with the clock as an argument.

DICOM has no end-of-study signal, so the node uses the two rules the field's routers use:

* quiet period: no instance has arrived for ``quiet_period`` (Orthanc's StableAge, mercure);
* force timeout: ``force_after`` has passed since the study was opened, even if instances keep
  trickling in (so a sender that never stops cannot starve the study).

A quiet period can pass while an image of the study is still on the wire (a slow link, a large
image): the SCP then holds the study (``held_until``, a lease it renews while the data set is being
received, see node/receive/holds.py), and the quiet period does not complete a held study. The force
timeout ignores holds, so a sender that stalls for ever cannot keep a study open either.

Release-triggered completion (opt-in per calling AE title, ``release_trigger_aes``): a PACS routing
rule forwards a whole study in one association and ends it with an A-RELEASE once every image has
been answered. A study whose every delivering association (since it was opened) came from such a
sender and was released, and whose every instance came from such a sender, completes
``release_settle`` after the last release (RELEASED) instead of waiting for the quiet period. An
association still open, aborted or cut off, or any instance from another sender, leaves the study
to the quiet period: modalities that send image by image never get a result per image. Holds apply
as to the quiet period.

A study is "opened" by its first instance, and opened again by an instance that arrives after it
was READY or later (the re-opened study is processed again), so both clocks restart at re-opening.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from node.states import AssociationEnding


class CompletionReason(enum.StrEnum):
    QUIET = "quiet"
    RELEASED = "released"  # every delivering association was released, and the settle time passed
    FORCED = "forced"


@dataclass(frozen=True)
class CompletionPolicy:
    """The completion rule's parameters: durations, and the calling AE titles (as sent, without
    padding) whose released associations complete a study after ``release_settle``."""

    quiet_period: timedelta
    force_after: timedelta
    release_trigger_aes: frozenset[str] = frozenset()
    release_settle: timedelta = timedelta(seconds=5)

    @classmethod
    def from_seconds(
        cls,
        quiet_period_s: float,
        force_complete_s: float,
        release_trigger_aes: Iterable[str] = (),
        release_settle_s: float = 5.0,
    ) -> CompletionPolicy:
        return cls(
            timedelta(seconds=quiet_period_s),
            timedelta(seconds=force_complete_s),
            frozenset(release_trigger_aes),
            timedelta(seconds=release_settle_s),
        )


@dataclass(frozen=True)
class Delivery:
    """An association that delivered instances of the study's current generation (recorded only
    for the release-trigger senders): its calling AE title, and how and when it ended (both None
    while it is open)."""

    calling_ae_title: str
    ending: AssociationEnding | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True)
class ArrivalTimes:
    """What the decision needs to know about one study that is still receiving."""

    study_id: int
    opened_at: datetime
    last_received_at: datetime
    held_until: datetime | None = None  # an image of the study is in flight until then, at least
    # For release-triggered completion: the recorded associations of this generation, and the
    # calling AE titles of every instance received since the study was opened.
    deliveries: tuple[Delivery, ...] = ()
    senders: frozenset[str] = field(default_factory=frozenset)

    def held(self, now: datetime) -> bool:
        """Whether a hold is in force at ``now`` (a hold that has expired holds nothing)."""
        return self.held_until is not None and now < self.held_until


@dataclass(frozen=True)
class Completion:
    study_id: int
    reason: CompletionReason


def released_at(study: ArrivalTimes, policy: CompletionPolicy) -> datetime | None:
    """When the last delivering association of the study was released, if release-triggered
    completion applies to it: at least one recorded association, every one of them from a
    release-trigger sender and ended by an A-RELEASE, and every instance from such a sender.
    None otherwise (the quiet period applies)."""
    trusted = policy.release_trigger_aes
    if not trusted or not study.deliveries or not study.senders <= trusted:
        return None
    ends = []
    for delivery in study.deliveries:
        if (
            delivery.calling_ae_title not in trusted
            or delivery.ending is not AssociationEnding.RELEASED
            or delivery.ended_at is None
        ):
            return None
        ends.append(delivery.ended_at)
    return max(ends)


def _arrived(
    study: ArrivalTimes, now: datetime, policy: CompletionPolicy
) -> CompletionReason | None:
    """Whether the study has arrived whole at ``now`` by the quiet period or by its releases,
    holds aside."""
    if now - study.last_received_at >= policy.quiet_period:
        return CompletionReason.QUIET
    released = released_at(study, policy)
    if (
        released is not None
        and now - max(released, study.last_received_at) >= policy.release_settle
    ):
        return CompletionReason.RELEASED
    return None


def completion_reason(
    study: ArrivalTimes, now: datetime, policy: CompletionPolicy
) -> CompletionReason | None:
    """Why the study is complete at ``now``, or None while it is still receiving.

    QUIET when the quiet period has passed and no hold is in force; RELEASED when, instead, every
    delivering association was released by a release-trigger sender at least ``release_settle``
    ago and no hold is in force; FORCED when the force timeout has passed, held or not. QUIET
    before RELEASED before FORCED when several apply."""
    arrived = _arrived(study, now, policy)
    if arrived is not None and not study.held(now):
        return arrived
    if now - study.opened_at >= policy.force_after:
        return CompletionReason.FORCED
    return None


def waits_for_image_in_flight(study: ArrivalTimes, now: datetime, policy: CompletionPolicy) -> bool:
    """True when only a hold keeps the study from completing at ``now``: its quiet period (or its
    settle time after the releases) has passed, but an image of it is still being received."""
    return (
        _arrived(study, now, policy) is not None
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
