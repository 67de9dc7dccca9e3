"""The operator's reports as typed values: what `mura-node status` and `mura-node studies show`
print, built by node/operate/status.py, drawn by node/operate/status_view.py.

Every report is a frozen dataclass; :func:`as_json` turns one into the plain data of ``--json``
(times as ISO 8601 text in UTC with seconds, DIMSE statuses as ``0xNNNN`` text, fields in
declaration order, a few under the JSON names of old: ``object``, ``from``, ``file``). No patient
data is held: studies are named by StudyInstanceUID and its shortened form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# field metadata: the key in the JSON form, when it differs from the field's name
JSON_NAME = "json"
# field metadata: an integer DIMSE status, written as 0xNNNN text
HEX_STATUS = "hex"


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with seconds (``2026-01-01T12:00:00+00:00``), or None."""
    return None if value is None else value.isoformat(timespec="seconds")


def hex_status(value: int | None) -> str | None:
    """A DIMSE status as ``0xNNNN`` (PS3.7 Annex C), or None."""
    return None if value is None else f"0x{value:04X}"


@dataclass(frozen=True)
class StudyRow:
    """One study in the queue's lists; ``study`` is the shortened StudyInstanceUID (unique in
    the database: `studies show` takes it).

    ``first_received_at``: the study's first instance ever; ``opened_at``: the start of the
    current generation (the first arrival, or the latest re-opening); ``reopened_at``: that
    re-opening, None while the study is at generation 1."""

    study: str
    study_instance_uid: str
    study_type: str | None
    images: int  # instances analysed
    other_objects: int  # instances ignored (not images to analyse)
    state: str
    generation: int
    first_received_at: datetime | None
    opened_at: datetime | None
    reopened_at: datetime | None
    last_received_at: datetime | None
    state_changed_at: datetime | None
    reason: str | None


@dataclass(frozen=True)
class DeadLetter:
    """A delivery that ran out of attempts (`mura-node retry` re-queues it)."""

    study: str
    study_instance_uid: str
    kind: str = field(metadata={JSON_NAME: "object"})  # the result's kind (sr, sc, ...)
    destination: str
    attempts: int
    last_error: str | None
    since: datetime | None


@dataclass(frozen=True)
class UnansweredEvent:
    """A study event recorded after a C-STORE went without a response."""

    at: datetime | None
    study: str
    event: str
    detail: str | None


@dataclass(frozen=True)
class InstanceCounts:
    """Instances held: images stored for analysis, other objects ignored."""

    stored: int
    ignored: int


@dataclass(frozen=True)
class WaitingStudy:
    """The oldest study not yet done; ``waiting_s`` in seconds since it opened."""

    study: str
    study_instance_uid: str
    state: str
    since: datetime | None
    waiting_s: float


@dataclass(frozen=True)
class Rejection:
    """A refused C-STORE: who sent it, the status returned and why."""

    at: datetime | None
    calling_ae_title: str
    status: int = field(metadata={HEX_STATUS: True})
    reason: str


@dataclass(frozen=True)
class Rejections:
    """Refused C-STOREs in the last 24 hours: how many, and the latest ones."""

    count: int
    recent: tuple[Rejection, ...]


@dataclass(frozen=True)
class QueueReport:
    """`mura-node status`: the queue at ``generated_at``; counts by state name.

    ``model_untrained``: the configured model has random weights (results are meaningless)."""

    generated_at: datetime
    model_untrained: bool
    deliveries: Mapping[str, int]
    dead_letters: tuple[DeadLetter, ...]
    after_unanswered: tuple[UnansweredEvent, ...]
    studies_by_state: Mapping[str, int]
    instances: InstanceCounts
    oldest_waiting: WaitingStudy | None
    recent_studies: tuple[StudyRow, ...]
    failed_studies: tuple[StudyRow, ...]
    rejected_last_24h: Rejections


@dataclass(frozen=True)
class InstanceRow:
    """One received instance of a study, with the header values that decided its role."""

    sop_instance_uid: str
    role: str
    sop_class_uid: str
    transfer_syntax_uid: str
    calling_ae_title: str = field(metadata={JSON_NAME: "from"})
    received_at: datetime | None
    revision: int
    body_part_examined: str | None
    anatomic_region: str | None
    study_type: str | None


@dataclass(frozen=True)
class HistoryEvent:
    """One entry of a study's history (its StudyEvent rows)."""

    at: datetime | None
    event: str
    detail: str | None


@dataclass(frozen=True)
class ResultRow:
    """One result object made for a study (SR, SC, summary, GSPS) and its file."""

    kind: str
    generation: int
    sop_instance_uid: str
    file_path: str = field(metadata={JSON_NAME: "file"})


@dataclass(frozen=True)
class DeliveryRow:
    """One result on its way to one destination."""

    kind: str = field(metadata={JSON_NAME: "object"})
    destination: str
    state: str
    attempts: int
    last_status: int | None = field(metadata={HEX_STATUS: True})
    last_error: str | None
    unanswered: int
    updated_at: datetime | None


@dataclass(frozen=True)
class StudyDetail:
    """`mura-node studies show`: everything the node knows about one study."""

    study_instance_uid: str
    state: str
    study_type: str | None
    reason: str | None
    generation: int
    first_received_at: datetime | None
    instances: tuple[InstanceRow, ...]
    history: tuple[HistoryEvent, ...]
    results: tuple[ResultRow, ...]
    deliveries: tuple[DeliveryRow, ...]


@dataclass(frozen=True)
class AmbiguousStudy:
    """A UID fragment that matches more than one study: the full UIDs it matches."""

    matches: tuple[str, ...]


def as_json(report: Any) -> Any:
    """A report (or any value in one) as JSON-ready data: dicts, lists, text and numbers."""
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        data: dict[str, Any] = {}
        for item in dataclasses.fields(report):
            value = getattr(report, item.name)
            if item.metadata.get(HEX_STATUS):
                value = hex_status(value)
            data[item.metadata.get(JSON_NAME, item.name)] = as_json(value)
        return data
    if isinstance(report, datetime):
        return iso(report)
    if isinstance(report, Mapping):
        return {key: as_json(value) for key, value in report.items()}
    if isinstance(report, tuple | list):
        return [as_json(value) for value in report]
    return report
