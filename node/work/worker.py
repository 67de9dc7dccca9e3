"""The inference worker: claim READY studies, run the model, write the SR and heatmaps, queue them.

A worker claims READY studies, each under its own claim and lease, until their images fill the
engine's batch (node/inference/engine.py), and runs one forward pass over them all; several
workers, in ``serve`` or on other machines (`mura-node worker`), share the queue through the
database. For each claimed study:

1. its analysed images of its study type are decoded once each (in ``model.preprocess_workers``
   processes when configured) into the model input and a display image, then put in the
   source's order (SeriesNumber, then InstanceNumber; node/results/order.py), never their
   arrival order;
2. the engine gives the image and study probabilities and maps, in the batch's forward pass;
3. the SR (naming the study's previous SR as predecessor, if any; "Image N" in the source's
   order), one heatmap SC per image (InstanceNumber N), the study's summary image and, when a
   destination takes "gsps", a presentation state per image are written durably to
   ``results/``, all with the study-level attributes of `node.results.identity.add_study_level`
   and one SeriesDate and SeriesTime;
4. one transaction of its own records the results, a delivery per destination and object, and
   the new state (DISPATCHING, or DONE without destinations), only if the claim is still ours.

While it runs, a worker's heartbeat renews its leases and returns to READY the claims of any worker
that stopped renewing its own (counted as a crash of the study, node/work/processing.py).

A study whose images cannot be decoded ends FAILED with a reason that starts "input fault" and says
which image (numbered in arrival order: the source's numbers of an image that cannot be read are
not known) and why; any other error in one study ends that study FAILED with a reason that starts
"node fault", and the worker goes on with the batch's other studies. Attributes the results copy
from the images are cleaned first (node/results/sanitise.py), so a header value never fails a
study; what was changed is recorded in the study's history ("headers cleaned", keywords only).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta

import numpy as np
import torch
from pydicom import dcmread
from pydicom.dataset import Dataset

from node import metrics
from node.clock import Clock, short_uid, utcnow
from node.config import Config, ModelConfig
from node.db import make_engine, safe_url
from node.errors import UndecodableImage
from node.inference.engine import InferenceEngine, StudyResult
from node.inference.preprocessing import DicomPreprocessor
from node.results.order import SourcePosition, source_order
from node.results.sanitise import clean_source, summarise
from node.states import ResultKind
from node.stopflag import StopFlag
from node.storage import FileStore
from node.wakeup import WakeReceiver, WakeSender, wait_for_work
from node.work.processing import ClaimedStudy, StudyImage, WorkQueue
from node.work.result_set import ResultSetWriter, StudyEvidence, algorithm_info, node_identity

log = logging.getLogger(__name__)

# A FAILED study's reason starts with who was at fault: the study's images, or the node itself.
INPUT_FAULT = "input fault"
NODE_FAULT = "node fault"


def node_fault(exc: BaseException) -> str:
    """The FAILED reason for an error of the node's own (not explained by the images)."""
    return f"{NODE_FAULT}: {exc.__class__.__name__}: {exc}"[:440] + " (see the node's log)"


@dataclass(frozen=True)
class PreparedStudy:
    """A claimed study ready for the model, every list in the source's order (one item per
    analysed image): its images, their headers as received, their positions, the model inputs
    (3 x S x S float32 tensors) and the display images (H x W or H x W x 3, values in [0, 1])."""

    claimed: ClaimedStudy
    images: list[StudyImage]
    headers: list[Dataset]
    positions: list[SourcePosition]
    inputs: list[torch.Tensor]
    displays: list[np.ndarray]


class Worker:
    """Processes READY studies with its collaborators (built by `build_worker`, owned from then
    on: ``close`` shuts them down): ``inference`` runs the model, ``queue`` is the shared work
    queue, ``store`` the data directory, ``preprocessor`` decodes images to model inputs and
    ``writer`` is the one thread on which a study's results are written and recorded."""

    def __init__(
        self,
        config: Config,
        inference: InferenceEngine,
        queue: WorkQueue,
        store: FileStore,
        preprocessor: DicomPreprocessor,
        writer: ThreadPoolExecutor,
        clock: Clock = utcnow,
    ) -> None:
        self.config = config
        self.inference = inference
        self.queue = queue
        self.store = store
        self.preprocessor = preprocessor
        self.writer = writer
        self.clock = clock
        self.identity = node_identity(config)
        self.algorithm = algorithm_info(inference)
        self.results = ResultSetWriter(store, self.algorithm, self.identity)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.lease = timedelta(seconds=config.worker.lease_s)
        self.pending: list[Future[None]] = []
        # serve's wake-ups (node/wakeup.py): READY studies wake this worker; recorded results
        # wake the dispatcher. None: the polls alone.
        self.wakeups: WakeReceiver | None = None
        self.results_made: WakeSender | None = None

    def run_once(self) -> bool:
        """Start processing a batch of READY studies if there is one; say whether there was.

        The worker claims READY studies, each on its own claim and lease, until their analysed
        images reach the engine's batch size (`InferenceEngine.batch_size`: the best measured on
        the CPU, ``model.batch_size`` on CUDA; the last study claimed may go past it, and a study
        is never split); one forward pass covers them all. Each study's results are then written
        and recorded on the writer thread, one study at a time, while this thread goes on with
        the next batch (the model releases the interpreter while it computes); ``drain`` waits
        for them. A failure of one study (its images, its results, its claim) ends that study
        only."""
        batch = self._claim_batch()
        if not batch:
            self.drain()
            return False
        self.process(batch)
        return True

    def _claim_batch(self) -> list[tuple[ClaimedStudy, list[StudyImage]]]:
        """Claim READY studies (oldest first) with their images until the images fill a batch."""
        batch: list[tuple[ClaimedStudy, list[StudyImage]]] = []
        images = 0
        while images < self.inference.batch_size:
            claimed = self.queue.claim_ready_study(self.worker_id, self.lease)
            if claimed is None:
                break
            try:
                study_images = self.queue.images(claimed)
            except Exception as exc:
                self._internal_error(claimed, exc)
                continue
            batch.append((claimed, study_images))
            images += len(study_images)
        return batch

    def drain(self) -> None:
        """Wait until the results of every study started so far are recorded."""
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def run(self, stop: StopFlag) -> None:
        done = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(done,), name="heartbeat")
        heartbeat.start()
        try:
            woken = False
            while not stop.is_set():
                if self.run_once():
                    woken = False
                elif woken and self.wakeups is not None:
                    # Woken for nothing: the wake-ups left were for studies already claimed
                    # (one per READY study, while this worker was busy). Drop them, and look once
                    # more, for a study made READY just now.
                    self.wakeups.drain()
                    woken = False
                else:
                    woken = wait_for_work(stop, self.wakeups, self.config.worker.poll_interval_s)
            self.drain()
        finally:
            done.set()
            heartbeat.join()

    def _heartbeat(self, done: threading.Event) -> None:
        """Renew the leases of this worker's claims a few times per lease period, so that only a
        worker that is gone loses its study; then return to READY the claims, of any worker on
        any machine, whose lease ran out. Workers reclaim, not the completion scheduler: only a
        worker can process a reclaimed study, and every worker sharing the queue beats, even
        where no `serve` runs (see node/work/processing.py for why two beats never clash)."""
        while not done.wait(self.lease.total_seconds() / 4):
            try:
                self.queue.renew_leases(self.worker_id, self.lease)
                reclaimed = self.queue.reclaim_expired()
            except Exception as exc:  # the database may be briefly away; try again next beat
                log.warning("cannot renew the lease of this worker's study: %s", exc)
                continue
            if reclaimed:
                log.warning(
                    "%d study(ies) whose worker stopped answering went back to READY", reclaimed
                )

    def close(self) -> None:
        """Wait for the results in writing, then shut down every collaborator but the model."""
        self.drain()
        self.writer.shutdown(wait=True)
        self.preprocessor.close()
        self.queue.database.dispose()

    def _guarded(self, claimed: ClaimedStudy, work: Callable[..., None], *args: object) -> None:
        """Run ``work(claimed, *args)``; an error ends this study FAILED, not the worker."""
        try:
            work(claimed, *args)
        except Exception as exc:
            self._internal_error(claimed, exc)

    def _internal_error(self, claimed: ClaimedStudy, exc: BaseException) -> None:
        log.error("study %s failed", short_uid(claimed.study_instance_uid), exc_info=exc)
        self.queue.fail(claimed, self.worker_id, node_fault(exc))

    def process(self, batch: list[tuple[ClaimedStudy, list[StudyImage]]]) -> None:
        """Decode each claimed study's images, run one forward pass over every study that could
        be decoded, then hand each study's results to the writer thread on its own."""
        prepared: list[PreparedStudy] = []
        for claimed, images in batch:
            try:
                study = self._prepare(claimed, images)
            except Exception as exc:
                self._internal_error(claimed, exc)
                continue
            if study is not None:
                prepared.append(study)
        if not prepared:
            return
        started = time.perf_counter()
        results = self._predict(prepared)
        count = sum(len(study.inputs) for study in prepared)
        for _ in range(count):
            metrics.inference_per_image((time.perf_counter() - started) / count)
        self.drain()  # at most one batch's results in writing at a time
        for study, result in zip(prepared, results, strict=True):
            if isinstance(result, Exception):
                self._internal_error(study.claimed, result)
                continue
            self.pending.append(
                self.writer.submit(self._guarded, study.claimed, self._write, study, result)
            )

    def _predict(self, prepared: list[PreparedStudy]) -> list[StudyResult | Exception]:
        """One forward pass over the batch; should it fail, each study is run on its own, so
        that an error is charged to the study that causes it."""
        try:
            return list(
                self.inference.predict_studies(
                    [(study.claimed.study_type, study.inputs) for study in prepared]
                )
            )
        except Exception:
            if len(prepared) == 1:
                raise
        outcomes: list[StudyResult | Exception] = []
        for study in prepared:
            try:
                outcomes += self.inference.predict_studies(
                    [(study.claimed.study_type, study.inputs)]
                )
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _prepare(self, claimed: ClaimedStudy, images: list[StudyImage]) -> PreparedStudy | None:
        """Decode a study's images and read their headers, in the source's order; None when the
        study ended FAILED for its input (no analysable image, an image that cannot be used)."""
        if not images:
            self.queue.fail(
                claimed, self.worker_id, f"{INPUT_FAULT}: no analysable image left in the study"
            )
            return None
        paths = [self.store.path_of(image.file_path) for image in images]
        decoded = []
        for index, item in enumerate(self.preprocessor.map_with_display(paths)):
            if isinstance(item, UndecodableImage):
                reason = f"{INPUT_FAULT}: image {index + 1} of {len(images)} cannot be used: {item}"
                self.queue.fail(claimed, self.worker_id, reason[:500])
                log.warning("study %s FAILED: %s", short_uid(claimed.study_instance_uid), reason)
                return None
            decoded.append(item)
        # Read only now: decoding has bounded what a deflated data set inflates to (pydicom
        # inflates one whole even to read its header).
        headers = [dcmread(path, stop_before_pixels=True) for path in paths]
        positions = [SourcePosition.of(header) for header in headers]
        order = source_order(positions)
        if claimed.ready_since is not None:
            metrics.queue_wait((utcnow() - claimed.ready_since).total_seconds())
        return PreparedStudy(
            claimed,
            [images[i] for i in order],
            [headers[i] for i in order],
            [positions[i] for i in order],
            [decoded[i][0] for i in order],
            [decoded[i][1] for i in order],
        )

    def _write(self, claimed: ClaimedStudy, study: PreparedStudy, result: StudyResult) -> None:
        """Clean the copied attributes, write the study's result set (node/work/result_set.py), then
        record it; the study's lists and ``result.images`` are in the source's order."""
        images, headers, positions, displays = (
            study.images,
            study.headers,
            study.positions,
            study.displays,
        )
        cleaned = [clean_source(header) for header in headers]
        sources = [source for source, _changes in cleaned]
        patients = {str(source.PatientID) for source in sources} - {""}
        if len(patients) > 1:
            reason = (
                f"{INPUT_FAULT}: the study's images name {len(patients)} different patients "
                "(PatientID); no result is written for a study that mixes patients"
            )
            self.queue.fail(claimed, self.worker_id, reason)
            log.warning("study %s FAILED: %s", short_uid(claimed.study_instance_uid), reason)
            return
        header_changes = summarise(changes for _source, changes in cleaned)
        created = self.clock()  # the result series' SeriesDate and SeriesTime
        predecessor_path = self.queue.latest_report(claimed.study_id)
        # The previous SR is gone when the study was purged after delivery (node/operate/retention.py).
        previous = self.store.path_of(predecessor_path) if predecessor_path else None
        predecessor = dcmread(previous) if previous and previous.is_file() else None
        evidence = StudyEvidence(headers, sources, positions, displays, result)
        gsps = any(ResultKind.GSPS in d.objects for d in self.config.destinations)
        written = self.results.write(evidence, created, predecessor, gsps)
        finding = "abnormal" if result.abnormal else "normal"
        summary = (
            f"{finding}: probability {result.probability:.3f} (threshold {result.threshold:g}), "
            f"{len(images)} image{'s' if len(images) != 1 else ''}"
            + (" [UNTRAINED MODEL]" if self.algorithm.untrained else "")
        )
        try:
            recorded = self.queue.finish(
                claimed,
                self.worker_id,
                written,
                self.config.destinations,
                summary,
                header_changes=header_changes,
            )
        except BaseException:
            self.results.discard(written)
            raise
        if not recorded:
            self.results.discard(written)
            log.info(
                "study %s changed while it was processed; it will be processed again",
                short_uid(claimed.study_instance_uid),
            )
            return
        if self.results_made is not None and self.config.destinations:
            self.results_made.notify()
        log.info("study %s: %s", short_uid(claimed.study_instance_uid), summary)


def build_worker(config: Config, inference: InferenceEngine, clock: Clock = utcnow) -> Worker:
    """A `Worker` with its collaborators built from ``config``: a SQLAlchemy engine and the work
    queue on ``config.database_url``, the data directory, the image decoder (sized for
    ``inference``) and the results writer thread."""
    database = make_engine(config.database_url)
    return Worker(
        config,
        inference,
        WorkQueue(database, clock, config.worker.max_crashes),
        FileStore(config.storage.data_dir),
        DicomPreprocessor(
            workers=config.model.preprocess_workers,
            size=inference.input_size,
            max_pixels=config.model.max_image_pixels,
            decode_device=config.model.decode_device,
            reduced=config.model.reduced_decoding,
        ),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="results"),
        clock,
    )


def cpu_threads_per_worker(configured: int, workers: int, default_threads: int) -> int:
    """The model's CPU threads in each of ``workers`` worker processes on one machine: as
    configured (``model.cpu_threads``); with 0 and one worker, PyTorch's default
    ``default_threads`` (one per physical core, or ``OMP_NUM_THREADS``); with 0 and several,
    that default shared out among them, at least one thread each. PyTorch's default in every
    process would run ``workers`` x ``default_threads`` threads: each forward pass's threads
    then wait for one another whenever one of them loses its core, and all slow down far more
    than in proportion (docs/performance.md, "Worker processes on the CPU")."""
    if configured > 0:
        return configured
    return max(1, default_threads // max(1, workers))


def worker_model_config(model: ModelConfig, workers: int) -> ModelConfig:
    """``model`` as each of ``workers`` worker processes on this machine runs it: its CPU
    threads from `cpu_threads_per_worker` and PyTorch's default in this process."""
    threads = cpu_threads_per_worker(model.cpu_threads, workers, torch.get_num_threads())
    return replace(model, cpu_threads=threads)


def run_worker_process(
    config: Config,
    stop: StopFlag | None = None,
    workers: int = 1,
    wakeups: WakeReceiver | None = None,
    results_made: WakeSender | None = None,
) -> None:
    """Entry point of a worker process, one of ``workers`` on this machine (`serve` starts
    ``worker.processes``; `mura-node worker` is one): loads the model, with the CPU cores shared
    out among the workers (`cpu_threads_per_worker`, from PyTorch's default in this new
    process), builds the worker's collaborators and runs until ``stop`` is set; `serve`'s
    ``wakeups`` and ``results_made`` (node/wakeup.py), when given, wake it and the dispatcher."""
    inference = InferenceEngine.from_config(worker_model_config(config.model, workers))
    worker = build_worker(config, inference)
    worker.wakeups, worker.results_made = wakeups, results_made
    log.info(
        "inference worker %d started: %s on %s (%s); queue %s",
        os.getpid(),
        ", ".join(f"{c.name} {c.version}" for c in inference.cards) or "UNTRAINED model",
        f"cpu, {torch.get_num_threads()} thread(s)"
        if inference.device.type == "cpu"
        else inference.device,
        inference.precision,
        safe_url(config.database_url),
    )
    stop = stop or threading.Event()
    try:
        worker.run(stop)
    finally:
        worker.close()
