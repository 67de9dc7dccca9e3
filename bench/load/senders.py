"""The senders: dcmtk's storescu in threads or pynetdicom SCUs in processes, one association per
study or one for all, with a watchdog that records stalled C-STOREs."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import PDU
from bench.load.corpus import CR, DX_PRESENTATION, EXPLICIT_LITTLE, Study


@dataclass
class SenderResult:
    sender: int
    started: float  # time.monotonic(), comparable between processes on Linux
    finished: float
    statuses: list[tuple[str, int | None, str]] = field(default_factory=list)  # uid, status, error
    latencies: list[float] = field(default_factory=list)  # seconds per C-STORE, request to response
    warnings: list[str] = field(default_factory=list)  # what pynetdicom logged at WARNING and above


STORESCU_LOG = """log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.ImmediateFlush = true
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%s.%q} %p %m%n
"""


def run_storescu_sender(
    index: int,
    groups: list[tuple[list[str], list[str]]],
    port: int,
    called: str,
    log_config: str,
    barrier: threading.Barrier,
    in_flight: list[float],
    results: list[SenderResult],
) -> None:
    """One sender thread: dcmtk's storescu, one run (one association) per group of files.

    storescu logs with millisecond time stamps (``STORESCU_LOG``): "Sending Store Request" to
    "Received Store Response (...)" is one C-STORE's round trip."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    barrier.wait()
    result = SenderResult(index, time.monotonic(), 0.0)
    for files, uids in groups:
        uid_of = dict(zip(files, uids, strict=True))
        answered: set[str] = set()
        command = ["storescu", "-lc", log_config, "-R", "-aet", f"SENDER{index}", "-aec", called]
        process = subprocess.Popen(
            [*command, "127.0.0.1", str(port), *files],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert process.stdout is not None
        current, sent_at = "", 0.0
        for line in process.stdout:
            stamp, _, rest = line.rstrip("\n").partition(" ")
            level, _, message = rest.partition(" ")
            try:
                at = float(stamp)
            except ValueError:
                continue  # storescu's progress dots
            if message.startswith("Sending file: "):
                current = message.removeprefix("Sending file: ")
            elif message.startswith("Sending Store Request"):
                sent_at = at
                in_flight[index] = time.monotonic()
            elif message.startswith("Received Store Response (") and current in uid_of:
                in_flight[index] = 0.0
                result.latencies.append(at - sent_at)
                text = message.removeprefix("Received Store Response (").removesuffix(")")
                code = 0 if text == "Success" else None
                result.statuses.append((uid_of[current], code, "" if code == 0 else text))
                answered.add(current)
            elif level in ("WARN", "ERROR", "FATAL"):
                result.warnings.append(f"{at:.3f} {level} {message}")
        process.wait()
        in_flight[index] = 0.0
        for path in files:
            if path not in answered:
                why = f"no response (storescu exited with {process.returncode})"
                result.statuses.append((uid_of[path], None, why))
    result.finished = time.monotonic()
    results.append(result)


def run_pynetdicom_sender(
    index: int,
    groups: list[tuple[list[str], list[str]]],
    port: int,
    called: str,
    barrier: Any,
    results: Any,
    in_flight: Any,
    stacks: str,
) -> None:
    """One sender process: a pynetdicom SCU, one association per group of files.

    ``in_flight[index]`` holds the monotonic time the current C-STORE was sent (0: none), for the
    stall watchdog; SIGUSR1 writes this process's thread stacks to ``stacks``. pynetdicom's
    warnings (e.g. "Received unexpected C-STORE service message") are returned."""
    import faulthandler

    from pynetdicom import AE

    stack_file = open(stacks, "w")  # noqa: SIM115 (open while the process lives)
    faulthandler.register(signal.SIGUSR1, file=stack_file, all_threads=True)
    warnings: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(f"{time.monotonic():.3f} {record.levelname} {record.getMessage()}")

    logging.getLogger("pynetdicom").addHandler(Keep(logging.WARNING))
    ae = AE(ae_title=f"SENDER{index}")
    for sop_class in (CR, DX_PRESENTATION):
        ae.add_requested_context(sop_class, EXPLICIT_LITTLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.connection_timeout = 30
    ae.maximum_pdu_size = PDU
    barrier.wait()
    result = SenderResult(index, time.monotonic(), 0.0)
    message_id = 0
    for files, uids in groups:
        try:
            assoc = ae.associate("127.0.0.1", port, ae_title=called)
        except Exception as exc:  # socket errors surface here on some platforms
            result.statuses += [(u, None, f"associate: {exc}") for u in uids]
            continue
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "association failed"
            result.statuses += [(u, None, why) for u in uids]
            continue
        try:
            for path, uid in zip(files, uids, strict=True):
                message_id = message_id % 65535 + 1
                sent = time.monotonic()
                in_flight[index] = sent
                try:
                    status = assoc.send_c_store(Path(path), msg_id=message_id)
                except Exception as exc:
                    result.statuses.append((uid, None, f"{exc.__class__.__name__}: {exc}"))
                    continue
                finally:
                    in_flight[index] = 0.0
                    result.latencies.append(time.monotonic() - sent)
                if "Status" in status:
                    comment = str(status.get("ErrorComment", ""))
                    result.statuses.append((uid, int(status.Status), comment))
                else:
                    result.statuses.append((uid, None, "no response (association aborted?)"))
        finally:
            if assoc.is_established:
                assoc.release()
    result.finished = time.monotonic()
    result.warnings = warnings
    results.put(result)


@dataclass
class Stall:
    sender: int
    since: float  # monotonic: when the C-STORE was sent
    detected: float


def send_all(
    corpus: list[list[Study]],
    port: int,
    called: str,
    args: argparse.Namespace,
    workdir: Path,
    on_stall: Any = None,
) -> tuple[float, float, list[SenderResult], list[Stall]]:
    """Run every sender at once; (start, end, results, stalls).

    Senders are threads that run storescu (``--sender storescu``) or processes with a pynetdicom
    SCU (``--sender pynetdicom``); each sends its studies on one association per study (or all
    on one, ``--one-association``). A C-STORE without response after ``--stall-s`` seconds is a
    stall: it is recorded and ``on_stall(stall)`` runs (once per C-STORE); a pynetdicom sender
    also writes its thread stacks to ``workdir/sender-N.stacks``."""
    groups = [
        [([f for s in studies for f in s.files], [u for s in studies for u in s.sop_uids])]
        if args.one_association
        else [(s.files, s.sop_uids) for s in studies]
        for studies in corpus
    ]
    workers: list[Any] = []
    if args.sender == "storescu":
        log_config = workdir / "storescu-log.cfg"
        log_config.write_text(STORESCU_LOG)
        thread_barrier = threading.Barrier(len(corpus) + 1)
        in_flight: Any = [0.0] * len(corpus)
        collected: list[SenderResult] = []
        workers = [
            threading.Thread(
                target=run_storescu_sender,
                args=(i, g, port, called, str(log_config), thread_barrier, in_flight, collected),
                name=f"sender-{i}",
            )
            for i, g in enumerate(groups)
        ]
        for worker in workers:
            worker.start()
        thread_barrier.wait(timeout=120)
    else:
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(len(corpus) + 1)
        queue = context.Queue()
        in_flight = context.Array("d", len(corpus), lock=False)
        workers = [
            context.Process(
                target=run_pynetdicom_sender,
                args=(
                    i,
                    g,
                    port,
                    called,
                    barrier,
                    queue,
                    in_flight,
                    str(workdir / f"sender-{i}.stacks"),
                ),
                name=f"sender-{i}",
            )
            for i, g in enumerate(groups)
        ]
        for worker in workers:
            worker.start()
        barrier.wait(timeout=120)
    start = time.monotonic()
    stalls: list[Stall] = []
    done = threading.Event()

    def watch() -> None:
        reported: set[tuple[int, float]] = set()
        while not done.wait(0.5):
            now = time.monotonic()
            for index, since in enumerate(list(in_flight)):
                if since and now - since > args.stall_s and (index, since) not in reported:
                    reported.add((index, since))
                    stall = Stall(index, since, now)
                    stalls.append(stall)
                    pid = getattr(workers[index], "pid", None)
                    if pid is not None:  # a pynetdicom sender process: its stacks
                        os.kill(pid, signal.SIGUSR1)
                    if on_stall is not None:
                        on_stall(stall)

    watchdog = threading.Thread(target=watch, name="stall-watchdog", daemon=True)
    watchdog.start()
    try:
        if args.sender == "storescu":
            for worker in workers:
                worker.join()
            results = collected
        else:
            results = [queue.get(timeout=3600) for _ in workers]
            for worker in workers:
                worker.join(60)
    finally:
        done.set()
        watchdog.join()
    end = max(r.finished for r in results)
    return start, end, sorted(results, key=lambda r: r.sender), stalls


def status_counts(results: list[SenderResult]) -> tuple[int, Counter[str], list[str]]:
    """(successes, other statuses counted, a few examples of failures)."""
    others: Counter[str] = Counter()
    examples: list[str] = []
    ok = 0
    for result in results:
        for _uid, status, comment in result.statuses:
            if status == 0:
                ok += 1
                continue
            key = f"0x{status:04X}" if status is not None else (comment or "no status")
            others[key] += 1
            if len(examples) < 5:
                examples.append(f"sender {result.sender}: {key} {comment}".strip())
    return ok, others, examples
