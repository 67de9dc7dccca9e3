"""`mura-node serve`: SCP and completion scheduler in this process, worker(s) and dispatcher in
child processes (inference holds the CPU; the SCP must keep answering). They share nothing but the
database and the data directory.

Start-up order: data directory, database schema (migrated to this version), model check, then the
scheduler, the SCP and the child processes. Shutdown order: stop accepting associations, let open
ones finish within the grace period, tell the children to stop (a worker finishes its study, the
dispatcher its round) and wait for them within the grace period, then stop the scheduler.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from collections.abc import Collection
from datetime import timedelta
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from node import __version__, metrics
from node.clock import Clock, utcnow
from node.complete.completer import Completer
from node.complete.completion import CompletionPolicy
from node.complete.scheduler import CompletionScheduler
from node.config import Config, ModelConfig
from node.db import database_error_reason, make_engine, safe_url, upgrade_database
from node.deliver.retry import Retry
from node.errors import CheckpointError, DatabaseUnavailable
from node.operate.retention import purge_delivered
from node.operate.status import untrained_model
from node.profiles import load_storage_profile, load_vocabulary
from node.receive.associations import AssociationLog
from node.receive.holds import HoldRenewer
from node.receive.ingest import IngestRecords
from node.receive.scp import StoreSCP
from node.receive.store_handler import StoreHandler
from node.stopflag import PipeStop, StopSignals
from node.storage import FileStore
from node.tls import client_context, server_description
from node.wakeup import WakePipe, WakeReceiver, WakeSender
from node.work.processing import WorkQueue

log = logging.getLogger(__name__)

# A child process that dies within RAN_LONG_S seconds of its start is restarted after 1, 2, 4 ...
# at most 60 seconds (counted over its deaths in a row); one that ran longer after 1 second.
RESTART = Retry.of_seconds(1.0, 60.0)
RAN_LONG_S = 60.0


class Node:
    """Everything `serve` runs, assembled from one Config."""

    def __init__(self, config: Config, clock: Clock = utcnow) -> None:
        self.config = config
        profile = load_storage_profile()
        vocabulary = load_vocabulary()
        self.store = FileStore(config.storage.data_dir)
        self.store.prepare()
        if config.metrics.enabled:  # before any process records a metric (children inherit it)
            metrics.prepare_directory(self.store.root / "metrics")
        self.endpoints: Any = None
        self.engine = make_engine(config.database_url)
        try:
            upgrade_database(self.engine)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(
                f"cannot prepare database {safe_url(config.database_url)}: "
                f"{database_error_reason(exc)}"
            ) from None
        self.ingest = IngestRecords(self.engine, clock)
        self.handler = StoreHandler(
            self.store,
            self.ingest,
            profile,
            threads=config.dicom.max_associations,
            max_dataset_bytes=config.dicom.max_dataset_bytes,
            min_free_bytes=config.storage.min_free_bytes,
            associations=AssociationLog(
                self.engine,
                config.completion.release_trigger_aes,
                clock,
                studies_released=self._released,
            ),
            on_stored=self._stored,
        )
        self.scp = StoreSCP(config.dicom, profile, self.handler)  # loads the TLS files
        self.holds = HoldRenewer(
            self.scp.studies_in_flight,
            self.ingest,
            config.completion,
            on_held=self._held,
        )
        for destination in config.destinations:
            client_context(destination)  # a missing or wrong TLS file stops the node here
        policy = CompletionPolicy.from_seconds(
            config.completion.quiet_period_s,
            config.completion.force_complete_s,
            config.completion.release_trigger_aes,
            config.completion.release_settle_s,
        )
        # The work role's queue, here only to return at once the claims of a worker process
        # that died; the workers themselves reclaim expired leases (node/work/worker.py).
        self.work_queue = WorkQueue(self.engine, clock, config.worker.max_crashes)
        retention = timedelta(days=config.storage.retention_days)
        # Wake-ups (node/wakeup.py): a study made READY here wakes an idle worker process, a
        # study's recorded results wake the dispatcher.
        self.context = multiprocessing.get_context("spawn")
        self.worker_wakeups = WakePipe(self.context)
        self.dispatch_wakeups = WakePipe(self.context)
        self._wake_workers = WakeSender(self.worker_wakeups.writer)
        self.scheduler = CompletionScheduler(
            Completer(self.engine, clock),
            policy,
            vocabulary,
            config.completion.tick_interval_s,
            on_ready=self._wake_workers.notify,
            housekeeping=(
                (lambda: purge_delivered(self.engine, self.store, retention, clock))
                if config.storage.purge_delivered
                else None
            ),
        )
        if config.worker.processes > 0:
            check_model(config.model)
        self.stop_reader, self.stop_writer = self.context.Pipe(duplex=False)
        self.children: list[BaseProcess] = []
        self.roles = ["worker"] * config.worker.processes + ["dispatcher"]
        self.started_at: dict[int, float] = {}
        self.restart_at: dict[int, float] = {}
        self.quick_deaths: dict[int, int] = {}  # deaths in a row within RAN_LONG_S of a start

    def start(self, children: bool = True) -> None:
        self.scheduler.start()
        if self.config.metrics.enabled:  # before the SCP: a peer that can connect can be watched
            self.endpoints = metrics.serve_endpoints(
                self.config.metrics.host,
                self.config.metrics.port,
                self._counts,
                self._health,
                model_untrained=untrained_model(self.config.model),
            )
        self.scp.start()
        self.holds.start()
        if children:
            self.children = [self._start_child(index) for index in range(len(self.roles))]
        dicom = self.config.dicom
        log.info(
            "mura-node %s receiving as %s on %s:%d%s; data in %s; database %s",
            __version__,
            dicom.ae_title,
            dicom.host,
            self.scp.port,
            server_description(dicom),
            self.store.root,
            safe_url(self.config.database_url),
        )
        log.info(
            "studies are complete after %.0f s without arrivals (at most %.0f s after opening); "
            "%d inference worker process(es); results go to %s",
            self.config.completion.quiet_period_s,
            self.config.completion.force_complete_s,
            self.config.worker.processes,
            ", ".join(d.name for d in self.config.destinations)
            or "no destination (kept in the data directory)",
        )
        if self.config.completion.release_trigger_aes:
            log.info(
                "studies delivered only by %s complete %.0f s after their associations are "
                "released",
                ", ".join(self.config.completion.release_trigger_aes),
                self.config.completion.release_settle_s,
            )

    def _stored(self, study_instance_uid: str) -> None:
        """An instance of the study was stored: it may complete a quiet period from now."""
        self._due([study_instance_uid], self.config.completion.quiet_period_s, "quiet")

    def _released(self, studies: Collection[str]) -> None:
        """A release-trigger sender released the association that delivered ``studies``."""
        self._due(studies, self.config.completion.release_settle_s, "release")

    def _held(self, studies: Collection[str], seconds: float) -> None:
        """``studies`` are held for ``seconds``: they may complete when the hold ends."""
        self._due(studies, seconds, "hold")

    def _due(self, studies: Collection[str], seconds: float, reason: str) -> None:
        """Tell the scheduler when ``studies`` may complete; an error here (the scheduler
        stopping) never reaches the C-STORE or the hold: the periodic tick still finds them."""
        try:
            for study in studies:
                self.scheduler.due_in(study, seconds, reason)
        except Exception:
            log.exception("cannot schedule the completion check of %d study(ies)", len(studies))

    def _start_child(self, index: int) -> BaseProcess:
        role = self.roles[index]
        number = self.roles[: index + 1].count(role)  # "worker 2": the second worker
        wakeups = (
            (self.worker_wakeups.reader, self.dispatch_wakeups.writer)
            if role == "worker"
            else (self.dispatch_wakeups.reader, None)
        )
        process = self.context.Process(
            target=run_child,
            args=(role, self.config, self.stop_reader, f"mura-node {role} {number}", *wakeups),
            name=f"mura-node-{role}-{index}",
            daemon=False,
        )
        process.start()
        self.started_at[index] = time.monotonic()
        return process

    def supervise(self) -> None:
        """Restart a child process that died (a native crash in a decoder, the OOM killer...).

        Its claimed study goes back to the queue at once (or ends FAILED once workers have died
        on it ``worker.max_crashes`` times). A child that keeps dying within a minute of its
        start is restarted after 1, 2, 4 ... at most 60 seconds."""
        if self.stop_writer.closed:
            return
        now = time.monotonic()
        for index, process in enumerate(self.children):
            if process.is_alive():
                continue
            due = self.restart_at.get(index)
            if due is None:
                exit_description = _describe_exit(process.exitcode)
                ran_long = now - self.started_at.get(index, now) >= RAN_LONG_S
                deaths = 1 if ran_long else self.quick_deaths.get(index, 0) + 1
                self.quick_deaths[index] = deaths
                delay = RESTART.delay(deaths).total_seconds()
                self.restart_at[index] = now + delay
                log.error("%s %s; restarting it in %.0f s", process.name, exit_description, delay)
                if self.roles[index] == "worker" and process.pid is not None:
                    self._release_claims_of(process.pid, exit_description)
            elif now >= due:
                self.children[index] = self._start_child(index)
                del self.restart_at[index]

    def _release_claims_of(self, pid: int, exit_description: str) -> None:
        try:
            released = self.work_queue.reclaim_dead_worker(
                f"{socket.gethostname()}:{pid}:", exit_description
            )
        except SQLAlchemyError as exc:
            log.warning("cannot release the dead worker's study now (%s); its lease will", exc)
            return
        if released:
            log.warning("the study the worker was processing went back to the queue")
            self._wake_workers.notify(released)

    def _counts(self) -> dict[str, dict[str, int]]:
        from sqlalchemy.orm import Session

        with Session(self.engine) as session:
            studies, deliveries = metrics.state_counts(session)
        return {"studies": studies, "deliveries": deliveries}

    def _health(self) -> str | None:
        """None when healthy, else what is wrong."""
        if self.scp.server is None:
            return "the DICOM listener is not running"
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except Exception as exc:
            return f"database: {exc.__class__.__name__}"
        dead = [p.name for p in self.children if not p.is_alive()]
        if dead:
            return f"child process(es) stopped: {', '.join(dead)}"
        return None

    def stop(self) -> None:
        grace = self.config.service.grace_period_s
        log.info("stopping: no new associations; waiting up to %.0f s for open ones", grace)
        aborted = self.scp.stop(grace)
        if aborted:
            log.warning("aborted %d association(s) still open after the grace period", aborted)
        self.holds.stop()
        self.stop_writer.close()  # every child sees end-of-file on its end
        deadline = time.monotonic() + grace
        for role, process in zip(self.roles, self.children, strict=False):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("%s did not stop within the grace period; killing it", process.name)
                process.kill()  # it ignores SIGTERM (see run_child)
                process.join(10)
                if role == "worker" and process.pid:
                    self._release_claims_of(process.pid, "was killed at shutdown")
        self.handler.close()
        if self.endpoints is not None:
            self.endpoints.shutdown()
        self.scheduler.stop()
        self.worker_wakeups.close()
        self.dispatch_wakeups.close()
        self.engine.dispose()
        log.info("stopped")


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def check_model(model: ModelConfig) -> None:
    """Fail at start, with a clear message, when the workers could not load the model.

    Raises CheckpointError. PyTorch is not imported here (node/inference/cards.py
    ``verify_weights``): ``serve``'s main process never runs the model."""
    if not model.cards and not model.allow_untrained:
        raise CheckpointError(
            "no model configured: set model.cards to one or more model card files "
            "(see models/README.md), model.allow_untrained = true to run without weights, "
            "or worker.processes = 0 for a node that only receives"
        )
    if not model.cards:
        return  # untrained: nothing to check, and no reason to load PyTorch in this process
    from node.inference.cards import load_card, verify_weights

    for card in model.cards:
        verify_weights(load_card(Path(card)))


def run_child(
    role: str,
    config: Config,
    stop_reader: Connection,
    title: str = "",
    wakeups: Connection | None = None,
    results_made: Connection | None = None,
) -> None:
    """A worker or dispatcher process: logs like the parent, stops when the parent closes its
    end of the stop pipe, or dies. ``title`` (e.g. "mura-node worker 1") becomes its process
    title, as `ps` and `top` show it. ``wakeups``: the reading end of its role's wake-up pipe;
    ``results_made`` (a worker's): the writing end of the dispatcher's (node/wakeup.py)."""
    from setproctitle import setproctitle

    from node.logs import configure_logging

    if title:
        setproctitle(title)
    configure_logging(config.service)
    # The parent decides when to stop: Ctrl-C and systemd send SIGINT / SIGTERM to the whole
    # process group, and the parent then closes the stop pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop = PipeStop(stop_reader)
    if role == "worker":
        from node.work.worker import run_worker_process

        run_worker_process(
            config,
            stop,
            workers=config.worker.processes,
            wakeups=WakeReceiver(wakeups) if wakeups is not None else None,
            results_made=WakeSender(results_made) if results_made is not None else None,
        )
    else:
        from node.deliver.dispatch import run_dispatcher_process

        run_dispatcher_process(
            config,
            stop,
            wakeups=WakeReceiver(wakeups, take_all=True) if wakeups is not None else None,
        )


def serve(config: Config) -> int:
    """Run until SIGINT or SIGTERM; return the exit status."""
    os.umask(0o077)  # images, results and the database: readable by the service user only
    node = Node(config)
    # pynetdicom streams each received data set to a temporary file; keeping those in the data
    # directory lets the store adopt them with a hard link instead of a copy.
    tempfile.tempdir = str(node.store.tmp)
    with StopSignals() as signals:
        try:
            node.start()
            while not signals.wait(1.0):
                node.supervise()
        finally:
            node.stop()
    return 0


def run_worker(config: Config) -> int:
    """`mura-node worker`: one inference worker in this process, on a thread, until SIGINT or
    SIGTERM (the current study is finished first); returns the exit status (0).

    The model and the database schema are checked first; a worker never migrates (`serve` or
    `db upgrade` does). An exception in the worker is raised again here, in the main thread.
    """
    import threading

    from node.db import check_schema
    from node.work.worker import run_worker_process

    check_model(config.model)
    engine = make_engine(config.database_url)
    try:
        check_schema(engine)
    finally:
        engine.dispose()
    stop = threading.Event()
    failures: list[BaseException] = []

    def work() -> None:
        try:
            run_worker_process(config, stop)
        except BaseException as exc:  # re-raised below, in the main thread
            failures.append(exc)

    with StopSignals() as signals:
        worker = threading.Thread(target=work, name="worker")
        worker.start()
        while worker.is_alive() and not signals.wait(0.5):
            pass
        stop.set()
        worker.join()
    if failures:
        raise failures[0]
    return 0
