"""`mura-node serve`: the SCP and the completion scheduler in one process, stopped by a signal.

Start-up order: data directory, database schema (migrated to this version), then the scheduler
and the SCP. Shutdown order: stop accepting associations, let open ones finish within the grace
period, then stop the scheduler. Later stages (inference worker, dispatcher) attach here.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
from types import FrameType

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from node import __version__
from node.completion import CompletionPolicy
from node.config import Config
from node.db import make_engine, upgrade_database
from node.errors import DatabaseUnavailable
from node.profiles import load_storage_profile, load_vocabulary
from node.repository import Clock, Repository, utcnow
from node.scheduler import CompletionScheduler
from node.scp import StoreHandler, StoreSCP
from node.storage import FileStore

log = logging.getLogger(__name__)


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Node:
    """Everything `serve` runs, assembled from one Config."""

    def __init__(self, config: Config, clock: Clock = utcnow) -> None:
        self.config = config
        profile = load_storage_profile()
        vocabulary = load_vocabulary()
        self.store = FileStore(config.storage.data_dir)
        self.store.prepare()
        self.engine = make_engine(config.database_url)
        try:
            upgrade_database(self.engine)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise DatabaseUnavailable(
                f"cannot prepare database {safe_url(config.database_url)}: {reason}"
            ) from None
        self.repository = Repository(self.engine, clock)
        self.handler = StoreHandler(
            self.store, self.repository, profile, threads=config.dicom.max_associations
        )
        self.scp = StoreSCP(config.dicom, profile, self.handler)
        policy = CompletionPolicy.from_seconds(
            config.completion.quiet_period_s, config.completion.force_complete_s
        )
        self.scheduler = CompletionScheduler(
            self.repository, policy, vocabulary, config.completion.tick_interval_s
        )

    def start(self) -> None:
        self.scheduler.start()
        self.scp.start()
        dicom = self.config.dicom
        log.info(
            "mura-node %s receiving as %s on %s:%d; data in %s; database %s",
            __version__,
            dicom.ae_title,
            dicom.host,
            self.scp.port,
            self.store.root,
            safe_url(self.config.database_url),
        )
        log.info(
            "studies are complete after %.0f s without arrivals (at most %.0f s after opening); "
            "this version has no inference worker yet: complete studies wait in READY",
            self.config.completion.quiet_period_s,
            self.config.completion.force_complete_s,
        )

    def stop(self) -> None:
        grace = self.config.service.grace_period_s
        log.info("stopping: no new associations; waiting up to %.0f s for open ones", grace)
        aborted = self.scp.stop(grace)
        if aborted:
            log.warning("aborted %d association(s) still open after the grace period", aborted)
        self.handler.close()
        self.scheduler.stop()
        self.engine.dispose()
        log.info("stopped")


def serve(config: Config) -> int:
    """Run until SIGINT or SIGTERM; return the exit status."""
    stop = threading.Event()

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    node = Node(config)
    # pynetdicom streams each received data set to a temporary file; keeping those in the data
    # directory lets the store adopt them with a hard link instead of a copy.
    tempfile.tempdir = str(node.store.tmp)
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        node.start()
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
