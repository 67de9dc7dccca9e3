"""The node's states and kinds as enums: a study's state, a delivery's state, a result's kind and
the names of a study's history events, how an association ended. They are StrEnums whose values are what the database
stores (``studies.state``, ``dispatches.state``, ``results.kind``, ``study_events.event``,
``associations.ending``), so a
member compares equal to its stored string and no query needs a conversion."""

from __future__ import annotations

import enum


class StudyState(enum.StrEnum):
    RECEIVING = "RECEIVING"
    READY = "READY"
    PROCESSING = "PROCESSING"
    DISPATCHING = "DISPATCHING"
    DONE = "DONE"
    IGNORED = "IGNORED"
    FAILED = "FAILED"


class DeliveryState(enum.StrEnum):
    """A dispatch row's state: one result on its way to one destination."""

    PENDING = "PENDING"  # not tried yet
    SENDING = "SENDING"  # taken by a dispatcher under a lease
    RETRY = "RETRY"  # a failed attempt; due again at next_attempt_at
    SENT = "SENT"  # stored at the destination (or confirmed there by C-FIND)
    DEAD = "DEAD"  # dead letter: attempts exhausted; `mura-node retry` re-queues it


DUE_DELIVERY_STATES = (DeliveryState.PENDING, DeliveryState.RETRY, DeliveryState.SENDING)


class ResultKind(enum.StrEnum):
    """What a result object is; a destination's `objects` names the kinds it receives."""

    SR = "sr"  # Comprehensive SR, TID 1500
    SC = "sc"  # one heatmap Secondary Capture per source image
    SUMMARY = "summary"  # one summary Secondary Capture per study
    GSPS = "gsps"  # Grayscale Softcopy Presentation State per source image (opt-in)


class StudyEventName(enum.StrEnum):
    """The names of a study's history events (`studies show`)."""

    OPENED = "opened"
    REOPENED = "reopened"
    INSTANCE_MOVED = "instance moved"
    INSTANCE_REPLACED = "instance replaced"
    HELD = "held"  # the quiet period passed while an image of the study was still arriving
    READY = "ready"
    IGNORED = "ignored"
    CLAIMED = "claimed"
    HEADERS_CLEANED = "headers cleaned"
    RESULTS = "results"
    FAILED = "failed"
    RECLAIMED = "reclaimed"  # a worker's lease ran out or its process died
    DELIVERY_CONFIRMED = (
        "delivery confirmed"  # held by the destination (C-FIND) after a lost response
    )
    SENT_AGAIN = "sent again"  # sent again after a lost response, without that confirmation
    DEAD_LETTER = "dead letter"
    REQUEUED = "re-queued"  # `mura-node retry` re-queued dead letters (detail: what had failed)
    DONE = "done"
    PURGED = "purged"


class AssociationEnding(enum.StrEnum):
    """How an association that delivered instances ended (``associations.ending``)."""

    RELEASED = "released"  # A-RELEASE: the sender ended it normally, every response received
    ABORTED = "aborted"  # A-ABORT or A-P-ABORT, from either side
    CLOSED = "closed"  # the connection was lost without a release or an abort


class IngestOutcome(enum.StrEnum):
    """What receiving one instance came to (and the ``outcome`` label of
    ``mura_node_instances_received``)."""

    STORED = "stored"  # a new instance
    DUPLICATE = "duplicate"  # the same SOPInstanceUID with the same content: nothing changed
    REPLACED = "replaced"  # the same SOPInstanceUID with new content: a new revision
    NOT_ANALYSED = "ignored"  # metrics only: stored, but of a role the model does not analyse
