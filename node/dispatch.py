"""The dispatcher: C-STORE SCU that delivers results to every configured destination.

Due deliveries (node/outbox.py) are grouped by destination and sent on one association per
destination and round. Success (0x0000) and the storage warnings 0xB000, 0xB006 and 0xB007 count as
stored; any other status, a refused association or a network failure is a failed attempt, retried
with exponential back-off and dead-lettered after ``dispatch.max_attempts``.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import timedelta

from pydicom import dcmread
from pynetdicom import AE

from node import metrics
from node.config import Config, Destination
from node.db import make_engine
from node.outbox import Delivery, Outbox
from node.repository import Clock, utcnow
from node.stopflag import StopFlag
from node.storage import FileStore
from node.tls import client_context

log = logging.getLogger(__name__)

STORED = {0x0000, 0xB000, 0xB006, 0xB007}
RESULT_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7")
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"


class Dispatcher:
    def __init__(self, config: Config, clock: Clock = utcnow) -> None:
        self.config = config
        self.settings = config.dispatch
        self.destinations = {d.name: d for d in config.destinations}
        self.tls = {d.name: client_context(d) for d in config.destinations}
        self.store = FileStore(config.storage.data_dir)
        self.db = make_engine(config.database_url)
        self.outbox = Outbox(self.db, clock)
        self.ae = AE(ae_title=config.dicom.ae_title)
        for sop_class in RESULT_CLASSES:
            self.ae.add_requested_context(sop_class, EXPLICIT_LITTLE)
        timeout = self.settings.timeout_s
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout
        self.ae.connection_timeout = timeout

    def run_once(self) -> int:
        """Send what is due; returns how many deliveries were attempted."""
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

    def run(self, stop: StopFlag) -> None:
        while not stop.is_set():
            try:
                attempted = self.run_once()
            except Exception:
                log.exception("dispatch round failed; the next round tries again")
                attempted = 0
            if not attempted:
                stop.wait(self.settings.poll_interval_s)

    def close(self) -> None:
        self.db.dispose()

    def _send(self, destination: Destination, deliveries: list[Delivery]) -> None:
        try:
            tls = self.tls[destination.name]
            assoc = self.ae.associate(
                destination.host,
                destination.port,
                ae_title=destination.ae_title,
                tls_args=(tls, destination.host) if tls is not None else None,
            )
        except Exception as exc:  # socket errors surface here on some platforms
            for delivery in deliveries:
                self._failed(delivery, None, f"cannot connect: {exc}")
            return
        if not assoc.is_established:
            reason = (
                "association rejected"
                if assoc.is_rejected
                else "association failed (destination down?)"
            )
            for delivery in deliveries:
                self._failed(delivery, None, reason)
            return
        try:
            for delivery in deliveries:
                if not assoc.is_established:
                    self._failed(delivery, None, "association lost")
                    continue
                try:
                    dataset = dcmread(self.store.path_of(delivery.file_path))
                    status = assoc.send_c_store(dataset)
                except Exception as exc:
                    self._failed(delivery, None, f"{exc.__class__.__name__}: {exc}")
                    continue
                code = int(status.Status) if "Status" in status else None
                if code in STORED:
                    self.outbox.sent(delivery, code)
                    metrics.delivery(destination.name, "stored")
                    log.info(
                        "delivered %s to %s (0x%04X)",
                        "SR" if "88" in delivery.sop_class_uid else "SC",
                        destination.name,
                        code,
                    )
                else:
                    comment = str(status.get("ErrorComment", "")) if code is not None else ""
                    error = (
                        f"status 0x{code:04X} {comment}".strip()
                        if code is not None
                        else "no response"
                    )
                    self._failed(delivery, code, error)
        finally:
            if assoc.is_established:
                assoc.release()

    def _failed(self, delivery: Delivery, status: int | None, error: str) -> None:
        state = self.outbox.failed(
            delivery,
            status,
            error,
            self.settings.max_attempts,
            self.settings.first_retry_s,
            self.settings.max_retry_s,
        )
        metrics.delivery(delivery.destination, "dead" if state == "DEAD" else "failed")
        level = logging.WARNING if state == "DEAD" else logging.INFO
        log.log(level, "delivery to %s failed (%s): %s", delivery.destination, state, error)


def run_dispatcher_process(config: Config, stop: StopFlag | None = None) -> None:
    dispatcher = Dispatcher(config)
    stop = stop or threading.Event()
    try:
        dispatcher.run(stop)
    finally:
        dispatcher.close()
