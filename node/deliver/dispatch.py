"""The dispatcher: delivers results to every configured destination as a C-STORE SCU.

Due deliveries (node/deliver/outbox.py) are grouped by destination and sent on one association per
destination and round (node/deliver/scu.py proposes the contexts and words what became of the
association). Success (0x0000) and the storage warnings 0xB000, 0xB006 and 0xB007 count as
stored; any other status, a failed association, or no presentation context for the object's SOP
class is a failed attempt, retried with exponential back-off and dead-lettered after
``dispatch.max_attempts``. Objects of other classes still go on the same association.

An attempt that sent the data set and got no response (timeout, abort, connection lost) leaves
the delivery ``unanswered``: the destination may hold the object. Before it is sent again, a
destination that accepts Study Root C-FIND is asked at IMAGE level; if it holds the object, the
delivery is SENT without sending (study event "delivery confirmed"); if not, it is sent. A
destination without C-FIND gets it again, and the study event "sent again" says that it may now
hold it twice (or have replaced it).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import timedelta

from pydicom.dataset import Dataset

from node import metrics
from node.clock import Clock, utcnow
from node.config import Config, Destination
from node.db import make_engine
from node.deliver.outbox import Delivery, Event, Outbox
from node.deliver.retry import Retry
from node.deliver.scu import SCU, STORED, Link
from node.metrics import DeliveryOutcome
from node.states import DeliveryState, StudyEventName
from node.stopflag import StopFlag
from node.storage import FileStore
from node.tls import client_context
from node.wakeup import WakeReceiver, wait_for_work

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, config: Config, clock: Clock = utcnow) -> None:
        self.config = config
        self.settings = config.dispatch
        self.destinations = {d.name: d for d in config.destinations}
        self.tls = {d.name: client_context(d) for d in config.destinations}
        self.store = FileStore(config.storage.data_dir)
        self.db = make_engine(config.database_url)
        self.outbox = Outbox(self.db, clock)
        self.retry = Retry.of_seconds(
            self.settings.first_retry_s, self.settings.max_retry_s, self.settings.max_attempts
        )
        self.scu = SCU(config.dicom.ae_title, self.settings.timeout_s)

    def run_once(self) -> int:
        """Send what is due; returns how many deliveries were taken."""
        lease = timedelta(seconds=self.settings.timeout_s * 4)
        due = self.outbox.take_due(lease)
        by_destination: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in due:
            by_destination[delivery.destination].append(delivery)
        for name, deliveries in by_destination.items():
            destination = self.destinations.get(name)
            if destination is None:
                for delivery in deliveries:
                    self._failed(delivery, None, f"destination {name!r} is no longer configured")
                continue
            self._send(destination, deliveries)
        return len(due)

    def run(self, stop: StopFlag, wakeups: WakeReceiver | None = None) -> None:
        """Delivery rounds until ``stop``; between rounds with nothing to send, wait for the
        poll interval, or less when ``wakeups`` (serve's, node/wakeup.py) says results were made."""
        while not stop.is_set():
            try:
                attempted = self.run_once()
            except Exception:
                log.exception("dispatch round failed; the next round tries again")
                attempted = 0
            if not attempted:
                wait_for_work(stop, wakeups, self.settings.poll_interval_s)

    def close(self) -> None:
        self.db.dispose()

    def _send(self, destination: Destination, deliveries: list[Delivery]) -> None:
        find = any(d.unanswered for d in deliveries)
        link = self.scu.open(destination, self.tls[destination.name], find=find)
        try:
            for index, delivery in enumerate(deliveries):
                if link.assoc is not None and not link.is_open:
                    # it ended after an earlier object (no response): the rest go next round
                    for left in deliveries[index:]:
                        self.outbox.release(left)
                    return
                refusal = link.refusal(delivery.sop_class_uid)
                if refusal is not None:
                    self._failed(delivery, None, refusal)
                else:
                    self._deliver(link, delivery)
        finally:
            link.close()

    def _deliver(self, link: Link, delivery: Delivery) -> None:
        name = link.destination.name
        path = self.store.path_of(delivery.file_path)
        event: Event | None = None
        if delivery.unanswered:
            held = None
            if link.offers_find:
                try:
                    held = link.holds(path)
                except Exception as exc:  # the file cannot be read: not asked
                    self._failed(delivery, None, f"C-FIND: {exc.__class__.__name__}: {exc}")
                    return
                if not link.is_open:
                    self._failed(delivery, None, f"association with {name} ended during C-FIND")
                    return
            what = f"{name}: {delivery.kind.upper()} {delivery.sop_instance_uid}"
            if held:
                detail = (
                    f"{what} held by the destination (C-FIND) after an attempt without "
                    "response; not sent again"
                )
                self.outbox.confirmed(delivery, (StudyEventName.DELIVERY_CONFIRMED, detail))
                metrics.delivery(name, DeliveryOutcome.STORED)
                log.info("%s holds the %s already (C-FIND)", name, delivery.kind.upper())
                return
            if held is None:  # may hold it: say so when it goes again
                why = (
                    "offers no C-FIND"
                    if not link.offers_find
                    else "answered the C-FIND with a failure"
                )
                event = (
                    StudyEventName.SENT_AGAIN,
                    f"{what} sent again after an attempt without response; {name} {why}, "
                    "so it may hold the object twice or have replaced it",
                )
        try:
            status = link.store(path)
        except Exception as exc:  # not sent: the file cannot be read or encoded
            self._failed(delivery, None, f"{exc.__class__.__name__}: {exc}")
            return
        self._answered(link, delivery, status, event)

    def _answered(
        self, link: Link, delivery: Delivery, status: Dataset, event: Event | None
    ) -> None:
        name = link.destination.name
        code = int(status.Status) if "Status" in status else None
        if code is None:
            error = (
                f"no response from {name} within {self.settings.timeout_s:g} s or association "
                "lost after the data set was sent; the destination may hold the object"
            )
            self._failed(delivery, None, error, unanswered=True, event=event)
        elif code in STORED:
            self.outbox.sent(delivery, code, event)
            metrics.delivery(name, DeliveryOutcome.STORED)
            log.info("delivered %s to %s (0x%04X)", delivery.kind.upper(), name, code)
        else:
            comment = str(status.get("ErrorComment", "") or "")
            error = f"status 0x{code:04X} {comment}".strip()
            self._failed(delivery, code, error, unanswered=False, event=event)

    def _failed(
        self,
        delivery: Delivery,
        status: int | None,
        error: str,
        *,
        unanswered: bool | None = None,
        event: Event | None = None,
    ) -> None:
        state = self.outbox.failed(
            delivery,
            status,
            error,
            self.retry,
            unanswered=unanswered,
            event=event,
        )
        dead = state == DeliveryState.DEAD
        metrics.delivery(
            delivery.destination, DeliveryOutcome.DEAD if dead else DeliveryOutcome.FAILED
        )
        level = logging.WARNING if dead else logging.INFO
        log.log(level, "delivery to %s failed (%s): %s", delivery.destination, state, error)


def run_dispatcher_process(
    config: Config, stop: StopFlag | None = None, wakeups: WakeReceiver | None = None
) -> None:
    dispatcher = Dispatcher(config)
    stop = stop or threading.Event()
    try:
        dispatcher.run(stop, wakeups)
    finally:
        dispatcher.close()
