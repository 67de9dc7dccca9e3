"""Load: eight concurrent senders, hundreds of instances each, while studies are processed and dispatched.

A real node (`mura-node serve` in a subprocess; one inference worker with the untrained model,
the dispatcher; completion quiet period 2 s) receives ``--senders`` concurrent senders. Each
sender sends ``--instances`` synthetic 256 x 256 16-bit radiographs (CR and DX, BodyPartExamined
WRIST or HAND, so every study is eligible) in studies of ``--images-per-study`` images, one
association per study: a thread that runs dcmtk's storescu per study (default), or a process
with a pynetdicom SCU (``--sender pynetdicom``). While they send, the node completes, processes
and dispatches the earlier studies to a destination: a pynetdicom storage SCP in this process that
counts what it receives. Before the load, one warm-up study goes through the whole pipeline (model
loaded, destination reachable); it is not counted. The database is SQLite, or a fresh database
created on the PostgreSQL server of ``--database-url`` (dropped afterwards).

Measured in the same run:

- ingest instances/s of all senders together (first C-STORE to the last sender's end), against
  the same senders sending the same files to a bare pynetdicom SCP that writes and fsyncs each
  data set (bench/ingest.py's baseline): the ratio node/bare. The node receives beside its own
  worker and dispatcher on the same CPUs, the bare SCP does not (``--ingest-only`` runs the node
  with ``worker.processes = 0``); C-STORE round trips (median, 99th percentile, largest);
- time from the first C-STORE until every study is DONE and every result has arrived;
- the node's memory: RSS of `serve` and of each child process sampled every
  ``--sample-interval`` s (after the warm-up, after the ingest, peak, at the end), each one's
  VmHWM, the peak of the sampled sum, and PSS (shared pages counted once) at those moments.

Checked at the end (exit status 1 otherwise): every C-STORE was answered 0x0000 (node and bare),
none waited longer than ``--stall-s`` (then the node's thread stacks and the sockets' queues are
written to the working folder, which is kept); every instance is in the node's database with its
file; every study is DONE and was processed once; the destination received exactly one SR per
study and one SC per image (referencing that image), each SOP Instance UID once; no dead letter,
no refused C-STORE, no ERROR in the node's log; `serve` exited 0 on SIGTERM. Studies re-opened by
an image that arrived after the quiet period are counted, not failed.

    .venv/bin/python bench/load.py                                   # 8 senders x 200, SQLite
    .venv/bin/python bench/load.py --database-url postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/load.py --ingest-only                     # receiving alone
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import wait_listening  # noqa: E402
from tests.support.factory import free_port  # noqa: E402

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
PDU = 262144


# -- corpus -------------------------------------------------------------------------------------


@dataclass
class Study:
    uid: str
    sender: int
    files: list[str]
    sop_uids: list[str]


def make_corpus(
    directory: Path, senders: int, instances: int, per_study: int, size: int
) -> list[list[Study]]:
    """Per sender, its studies: CR and DX in turn, WRIST and HAND in turn, ``size`` x ``size``
    16-bit (12 stored) pixels."""
    from pydicom.uid import generate_uid

    from tests.support.factory import make_radiograph, write

    corpus: list[list[Study]] = []
    number = 0
    for sender in range(senders):
        studies: list[Study] = []
        left = instances
        while left > 0:
            count = min(per_study, left)
            left -= count
            uid = generate_uid()
            folder = directory / f"sender{sender}" / f"study{len(studies):04d}"
            folder.mkdir(parents=True)
            study = Study(uid, sender, [], [])
            for index in range(count):
                ds = make_radiograph(
                    study_uid=uid,
                    sop_class=CR if number % 2 == 0 else DX_PRESENTATION,
                    body_part="WRIST" if number % 4 < 2 else "HAND",
                    rows=size,
                    columns=size,
                    seed=number * 31 + index,
                )
                ds.InstanceNumber = index + 1
                study.files.append(str(write(ds, folder / f"{index:03d}.dcm")))
                study.sop_uids.append(str(ds.SOPInstanceUID))
            studies.append(study)
            number += 1
        corpus.append(studies)
    return corpus


# -- senders ------------------------------------------------------------------------------------


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


# -- the bare receiver --------------------------------------------------------------------------

BARE_SCP = """
import os, sys, uuid
from pynetdicom import AE, AllStoragePresentationContexts, evt
out = sys.argv[2]
def handle(event):
    path = os.path.join(out, uuid.uuid4().hex + ".dcm")
    with open(path, "wb") as fp:
        fp.write(event.encoded_dataset())
        fp.flush()
        os.fsync(fp.fileno())
    return 0x0000
ae = AE(ae_title="BARE")
ae.maximum_pdu_size = int(sys.argv[3])
ae.maximum_associations = int(sys.argv[4])
ae.require_called_aet = False
ae.supported_contexts = AllStoragePresentationContexts
ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True, evt_handlers=[(evt.EVT_C_STORE, handle)])
"""


@dataclass
class BareRun:
    seconds: float
    results: list[SenderResult]
    stalls: list[Stall]
    files: int  # what the bare SCP wrote


def run_bare(workdir: Path, corpus: list[list[Study]], args: argparse.Namespace) -> BareRun:
    port = free_port()
    out = workdir / "bare"
    out.mkdir()
    command = [sys.executable, "-c", BARE_SCP, str(port), str(out), str(PDU), str(len(corpus) + 8)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_listening(port, process, timeout=120)
        stacks = workdir / "bare-stacks"
        stacks.mkdir()
        start, end, results, stalls = send_all(corpus, port, "BARE", args, stacks)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return BareRun(end - start, results, stalls, len(list(out.iterdir())))


# -- the destination ----------------------------------------------------------------------------


class Sink:
    """A pynetdicom storage SCP standing in for the PACS: counts every result it receives."""

    def __init__(self) -> None:
        from pynetdicom import AE

        self.port = free_port()
        self.lock = threading.Lock()
        self.stores: Counter[str] = Counter()  # SOP Instance UID -> C-STOREs received
        self.by_study: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.source_of: dict[str, str] = {}  # SC -> the image it references
        self.last_at = 0.0
        self.ae = AE(ae_title="SINK")
        self.ae.maximum_associations = 16
        for sop_class in (SR_CLASS, SC_CLASS):
            self.ae.add_supported_context(sop_class)
        self.server: Any = None
        self.warm_up: set[str] = set()  # the warm-up study, not counted

    def _on_store(self, event: Any) -> int:
        request = event.request
        uid = str(request.AffectedSOPInstanceUID)
        sop_class = str(request.AffectedSOPClassUID)
        ds = event.dataset
        source = None
        if sop_class == SC_CLASS and "SourceImageSequence" in ds:
            source = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        with self.lock:
            self.stores[uid] += 1
            self.by_study[str(ds.StudyInstanceUID)][sop_class].add(uid)
            if source is not None:
                self.source_of[uid] = source
            self.last_at = time.monotonic()
        return 0x0000

    def start(self) -> None:
        from pynetdicom import evt

        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def complete(self, studies: list[Study]) -> bool:
        with self.lock:
            return all(
                len(self.by_study.get(s.uid, {}).get(SR_CLASS, ())) >= 1
                and len(self.by_study.get(s.uid, {}).get(SC_CLASS, ())) >= len(s.sop_uids)
                for s in studies
            )

    def problems(self, studies: list[Study]) -> list[str]:
        """What differs from one SR per study and one SC per image, each received once."""
        found = []
        with self.lock:
            wrong_reports, wrong_heatmaps = [], []
            for study in studies:
                got = self.by_study.get(study.uid, {})
                reports = got.get(SR_CLASS, set())
                heatmaps = got.get(SC_CLASS, set())
                if len(reports) != 1:
                    wrong_reports.append(f"{len(reports)} SR")
                sources = {self.source_of.get(uid) for uid in heatmaps}
                if len(heatmaps) != len(study.sop_uids) or sources != set(study.sop_uids):
                    wrong_heatmaps.append(f"{len(heatmaps)} SC for {len(study.sop_uids)} images")
            if wrong_reports:
                found.append(
                    f"destination: {len(wrong_reports)} study(ies) without exactly one SR "
                    f"(e.g. {', '.join(sorted(set(wrong_reports))[:3])})"
                )
            if wrong_heatmaps:
                found.append(
                    f"destination: {len(wrong_heatmaps)} study(ies) without one SC per image "
                    f"(e.g. {', '.join(sorted(set(wrong_heatmaps))[:3])})"
                )
            repeated = {uid: n for uid, n in self.stores.items() if n > 1}
            if repeated:
                found.append(f"destination: {len(repeated)} object(s) received more than once")
            stray = set(self.by_study) - {s.uid for s in studies} - self.warm_up
            if stray:
                found.append(f"destination: results for {len(stray)} study(ies) that were not sent")
        return found


# -- memory -------------------------------------------------------------------------------------


@dataclass
class ProcessMemory:
    label: str
    started: int  # clock ticks after boot (/proc/PID/stat field 22)
    rss: int = 0  # kB, last sample
    rss_peak: int = 0
    hwm: int = 0
    marks: dict[str, int] = field(default_factory=dict)  # RSS at named moments
    pss: dict[str, int] = field(default_factory=dict)  # PSS at the same moments


class MemorySampler(threading.Thread):
    """Samples the RSS of a process and all its descendants from /proc (no psutil needed)."""

    def __init__(self, root: int, roles: list[str], interval: float) -> None:
        super().__init__(name="memory", daemon=True)
        self.root = root
        self.roles = roles  # the spawned children in start order
        self.interval = interval
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.processes: dict[int, ProcessMemory] = {}
        self.spawned = 0
        self.total_peak = 0
        self.total_marks: dict[str, int] = {}
        self.total_pss: dict[str, int] = {}
        try:
            self.root_command = (
                Path(f"/proc/{root}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
        except OSError:
            self.root_command = ""

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def mark(self, name: str) -> None:
        """Remember each process's RSS and PSS now (PSS counts shared pages once, split between
        the processes that map them; reading it costs milliseconds, so only at marks)."""
        self.sample()
        with self.lock:
            total = total_pss = 0
            for pid, info in self.processes.items():
                if info.rss:
                    info.marks[name] = info.rss
                    info.pss[name] = _proc_pss(pid)
                    total += info.rss
                    total_pss += info.pss[name]
            self.total_marks[name] = total
            self.total_pss[name] = total_pss

    def sample(self) -> None:
        pids = self._tree(self.root)
        with self.lock:
            total = 0
            seen = set()
            for pid in pids:
                status = _proc_status(pid)
                if status is None:
                    continue
                seen.add(pid)
                info = self.processes.get(pid)
                if info is None:
                    info = ProcessMemory("", _start_ticks(pid))
                    self.processes[pid] = info
                info.rss = status.get("VmRSS", 0)
                info.rss_peak = max(info.rss_peak, info.rss)
                info.hwm = max(info.hwm, status.get("VmHWM", 0))
                total += info.rss
            unlabelled = [(pid, info) for pid, info in self.processes.items() if not info.label]
            for pid, info in sorted(unlabelled, key=lambda item: (item[1].started, item[0])):
                info.label = self._label(pid)
            for pid, info in self.processes.items():
                if pid not in seen:
                    info.rss = 0
            self.total_peak = max(self.total_peak, total)

    def _label(self, pid: int) -> str:
        if pid == self.root:
            return "serve (SCP, scheduler)"
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            command = ""
        if "resource_tracker" in command:
            return "resource tracker"
        if command == self.root_command:
            return ""  # forked, not yet executed: look again at the next sample
        if "spawn_main" in command:
            role = self.roles[self.spawned] if self.spawned < len(self.roles) else "restarted child"
            self.spawned += 1
            return role
        return command.split(" ")[0].rsplit("/", 1)[-1] or f"pid {pid}"

    @staticmethod
    def _tree(root: int) -> list[int]:
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                    todo += [int(c) for c in text.split()]
            except OSError:
                continue
        return found


def _proc_status(pid: int) -> dict[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            values[key] = int(value.split()[0])
    return values


def _proc_pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _start_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


# -- the node -----------------------------------------------------------------------------------


def fresh_postgres(base_url: str) -> tuple[str, Any]:
    """Create an empty database beside ``base_url``'s; (its URL, a function that drops it)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(base_url).set(drivername="postgresql+psycopg")
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"mura_load_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return base.set(database=name).render_as_string(hide_password=False), drop


def write_config(
    path: Path,
    port: int,
    data: Path,
    database_url: str,
    sink: Sink,
    workers: int,
    quiet_period_s: float,
) -> None:
    database = f'[database]\nurl = "{database_url}"\n' if database_url else ""
    path.write_text(
        f"""
[dicom]
host = "127.0.0.1"
port = {port}
[storage]
data_dir = "{data}"
{database}
[completion]
quiet_period_s = {quiet_period_s}
tick_interval_s = 0.5
[model]
allow_untrained = true
[worker]
processes = {workers}
poll_interval_s = 0.5
[dispatch]
poll_interval_s = 0.5
[service]
log_level = "WARNING"
log_format = "json"
[[destinations]]
name = "sink"
ae_title = "SINK"
host = "127.0.0.1"
port = {sink.port}
objects = ["sr", "sc"]  # the summary image is written, not sent: deliveries as measured before
"""
    )


def send_warm_up(directory: Path, port: int) -> Study:
    """One study of one image, sent from this process; returns it."""
    from pynetdicom import AE

    corpus = make_corpus(directory, 1, 1, 1, 256)
    study = corpus[0][0]
    ae = AE(ae_title="WARMUP")
    ae.add_requested_context(CR, EXPLICIT_LITTLE)
    assoc = ae.associate("127.0.0.1", port, ae_title="MURA_NODE")
    if not assoc.is_established:
        raise RuntimeError("warm-up: the node refused the association")
    status = assoc.send_c_store(Path(study.files[0]))
    assoc.release()
    if int(status.get("Status", -1)) != 0:
        raise RuntimeError(f"warm-up: C-STORE answered {status}")
    return study


class NodeDatabase:
    """Read-only look at the node's queue while it runs."""

    def __init__(self, url: str) -> None:
        from node.db import make_engine

        self.engine = make_engine(url, readonly=True)

    def states(self) -> Counter[str]:
        from sqlalchemy import func, select

        from node.db import Dispatch, Study

        with self.engine.connect() as connection:
            studies = Counter(
                {
                    f"study {state}": int(n)
                    for state, n in connection.execute(
                        select(Study.state, func.count()).group_by(Study.state)
                    )
                }
            )
            for state, n in connection.execute(
                select(Dispatch.state, func.count()).group_by(Dispatch.state)
            ):
                studies[f"delivery {state}"] = int(n)
        return studies

    def report(self, studies: list[Study], data_dir: Path) -> dict[str, Any]:
        from sqlalchemy import func, select

        from node.db import IngestRejection, Instance, Result, StudyEvent
        from node.db import Study as StudyRow

        uids = {s.uid for s in studies}
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(StudyRow.id, StudyRow.study_instance_uid, StudyRow.state)
            ).all()
            ids = {r.id for r in rows if r.study_instance_uid in uids}
            states = Counter(r.state for r in rows if r.study_instance_uid in uids)
            instances = connection.execute(
                select(
                    Instance.sop_instance_uid,
                    Instance.file_path,
                    Instance.study_id,
                    Instance.received_at,
                )
            ).all()
            events: dict[str, list[datetime]] = defaultdict(list)
            per_study_events: Counter[tuple[int, str]] = Counter()
            last_ready: dict[int, datetime] = {}
            for study_id, event, at in connection.execute(
                select(StudyEvent.study_id, StudyEvent.event, StudyEvent.at)
            ):
                if study_id in ids:
                    events[event].append(at)
                    per_study_events[(study_id, event)] += 1
                    if event == "ready":
                        last_ready[study_id] = max(at, last_ready.get(study_id, at))
            results = Counter(
                (r.study_id, r.kind)
                for r in connection.execute(select(Result.study_id, Result.kind))
                if r.study_id in ids
            )
            rejections = connection.scalar(select(func.count()).select_from(IngestRejection))
        stored = {r.sop_instance_uid: r.file_path for r in instances if r.study_id in ids}
        last_arrival: dict[int, datetime] = {}
        for r in instances:
            if r.study_id in ids:
                last_arrival[r.study_id] = max(
                    r.received_at, last_arrival.get(r.study_id, r.received_at)
                )
        # READY this long after the last image arrived (the quiet period included)
        ready_after = sorted(
            (at - last_arrival[study_id]).total_seconds()
            for study_id, at in last_ready.items()
            if study_id in last_arrival
        )
        missing_files = sum(
            1 for p in stored.values() if p is None or not _stored_file(data_dir, p).is_file()
        )
        return {
            "states": states,
            "stored": stored,
            "missing_files": missing_files,
            "events": events,
            "claimed_more_than_once": sum(
                1 for (_, e), n in per_study_events.items() if e == "claimed" and n > 1
            ),
            "reopened": sum(n for (_, e), n in per_study_events.items() if e == "reopened"),
            "results": results,
            "rejections": int(rejections or 0),
            "ready_after": ready_after,
        }

    def close(self) -> None:
        self.engine.dispose()


def _stored_file(data_dir: Path, relative: str) -> Path:
    from node.storage import FileStore

    return FileStore(data_dir).path_of(relative)


def log_summary(path: Path) -> tuple[Counter[str], list[str]]:
    levels: Counter[str] = Counter()
    examples: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            levels["unparsed"] += 1  # e.g. a crash's traceback on stderr
            if len(examples) < 8:
                examples.append(line[:300])
            continue
        levels[entry.get("level", "?")] += 1
        if entry.get("level") in ("ERROR", "CRITICAL") and len(examples) < 8:
            examples.append(f"{entry.get('process')}: {entry.get('message')}"[:300])
    return levels, examples


# -- the run ------------------------------------------------------------------------------------


@dataclass
class NodeRun:
    start: float  # monotonic: the senders were released
    end: float  # monotonic: the last sender released its association
    started_wall: datetime  # UTC, to compare with the node's event times
    results: list[SenderResult]
    stalls: list[Stall]
    all_done: float  # monotonic: every study DONE and every result at the destination
    report: dict[str, Any]
    status_json: subprocess.CompletedProcess[str]
    exit_code: int | None
    problems: list[str]


# `mura-node serve`, with SIGUSR1 writing every thread's stack to the file named first (the stall
# watchdog uses it); nothing else differs from `python -m node serve`.
SERVE = """
import faulthandler, signal, sys
stacks = open(sys.argv[1], "w")
faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
from node.cli import main
sys.exit(main(sys.argv[2:]))
"""


def snapshot_sockets(port: int, path: Path) -> None:
    """The TCP sockets to and from ``port`` with their queues (ss), for a stall's record."""
    result = subprocess.run(
        ["ss", "-tnpi", f"( sport = :{port} or dport = :{port} )"], capture_output=True, text=True
    )
    path.write_text(result.stdout + result.stderr)


def run_node(
    args: argparse.Namespace,
    workdir: Path,
    corpus: list[list[Study]],
    database_url: str,
    sink: Sink,
    sampler_interval: float,
) -> tuple[NodeRun, MemorySampler, Path]:
    """Start `serve`, send the warm-up study, then the load; wait until all is processed."""
    studies = [s for per_sender in corpus for s in per_sender]
    port = free_port()
    data = workdir / "data"
    config = workdir / "mura-node.toml"
    workers = 0 if args.ingest_only else 1
    write_config(config, port, data, database_url, sink, workers, args.quiet_period)
    log_path = workdir / "serve.log"
    serve_stacks = workdir / "serve.stacks"
    with log_path.open("wb") as log_file:
        serve = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(serve_stacks), "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sampler = MemorySampler(serve.pid, ["worker"] * workers + ["dispatcher"], sampler_interval)
    sampler.start()
    db = None
    problems: list[str] = []
    try:
        wait_listening(port, serve, timeout=120)
        db = NodeDatabase(database_url or f"sqlite:///{(data / 'mura-node.db').resolve()}")
        warm = send_warm_up(workdir / "warm", port)
        sink.warm_up = {warm.uid}
        deadline = time.monotonic() + 300
        while not args.ingest_only and (
            not sink.complete([warm]) or db.states().get("study DONE", 0) < 1
        ):
            if time.monotonic() > deadline or serve.poll() is not None:
                raise RuntimeError("the warm-up study did not go through the node")
            time.sleep(0.5)
        time.sleep(2 * sampler_interval)
        sampler.mark("warm")

        def on_stall(stall: Stall) -> None:
            number = len(stall_records) + 1
            snapshot_sockets(port, workdir / f"stall-{number}.ss")
            with serve_stacks.open("a") as out:
                out.write(f"\n--- stall {number}: sender {stall.sender} ---\n")
            os.kill(serve.pid, signal.SIGUSR1)
            stall_records.append(stall)
            print(
                f"  stall: sender {stall.sender} has waited {stall.detected - stall.since:.0f} s "
                f"for a C-STORE response; stacks in {serve_stacks} and {workdir}/sender-"
                f"{stall.sender}.stacks, sockets in stall-{number}.ss",
                file=sys.stderr,
            )

        stall_records: list[Stall] = []
        started_wall = datetime.now(UTC)
        start, end, results, stalls = send_all(corpus, port, "MURA_NODE", args, workdir, on_stall)
        sampler.mark("ingested")
        print(
            f"node: {sum(map(len, (r.statuses for r in results))) / (end - start):.1f} inst/s",
            file=sys.stderr,
        )

        deadline = time.monotonic() + args.timeout
        last_print = 0.0
        while not args.ingest_only:
            states = db.states()
            done = states.get("study DONE", 0) - 1  # the warm-up study
            if done >= len(studies) and sink.complete(studies):
                break
            if (
                states.get("study FAILED")
                or states.get("study IGNORED")
                or states.get("delivery DEAD")
            ):
                problems.append(f"studies or deliveries in end states: {dict(states)}")
                break
            if serve.poll() is not None:
                problems.append(f"serve exited with {serve.returncode} while processing")
                break
            if time.monotonic() > deadline:
                problems.append(f"not all processed within {args.timeout:.0f} s: {dict(states)}")
                break
            if time.monotonic() - last_print > 15:
                print(f"  waiting: {dict(sorted(states.items()))}", file=sys.stderr)
                last_print = time.monotonic()
            time.sleep(0.5)
        all_done = time.monotonic()
        time.sleep(3)  # a late duplicate would arrive within a dispatcher round or two
        sampler.mark("end")
        status_json = subprocess.run(
            [sys.executable, "-m", "node", "status", "--json", "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        report = db.report(studies, data)
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                exit_code = serve.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                exit_code = serve.wait()
                problems.append("serve did not stop within 120 s of SIGTERM")
        else:
            exit_code = serve.returncode
        sampler.stop()
        if db is not None:
            db.close()
    run = NodeRun(
        start,
        end,
        started_wall,
        results,
        stalls,
        all_done,
        report,
        status_json,
        exit_code,
        problems,
    )
    return run, sampler, log_path


def check(
    run: NodeRun, studies: list[Study], sink: Sink, log_path: Path, ingest_only: bool
) -> list[str]:
    """Everything that differs from: all stored, all processed once, all delivered once."""
    problems = list(run.problems)
    total = sum(len(s.sop_uids) for s in studies)
    ok, others, examples = status_counts(run.results)
    if ok != total:
        problems.append(
            f"{ok}/{total} C-STOREs answered 0x0000 by the node; others {dict(others)}; "
            f"e.g. {examples}"
        )
    for result in run.results:
        for warning in result.warnings[:5]:
            problems.append(f"sender {result.sender} (pynetdicom): {warning}")
    for stall in run.stalls:
        problems.append(
            f"sender {stall.sender}: a C-STORE waited more than {stall.detected - stall.since:.0f} s "
            f"for its response (sent {stall.since - run.start:.1f} s after the start)"
        )
    report = run.report
    acknowledged = {uid for r in run.results for uid, status, _ in r.statuses if status == 0}
    lost = acknowledged - set(report["stored"])
    if lost:
        problems.append(f"LOST: {len(lost)} instance(s) answered 0x0000 but not in the database")
    unanswered = {u for s in studies for u in s.sop_uids} - acknowledged - set(report["stored"])
    if unanswered:
        problems.append(f"{len(unanswered)} instance(s) neither acknowledged nor stored")
    if report["missing_files"]:
        problems.append(f"{report['missing_files']} stored instance(s) without their file")
    if not ingest_only:
        if report["states"] != Counter({"DONE": len(studies)}):
            problems.append(f"study states {dict(report['states'])}, expected all DONE")
        if report["claimed_more_than_once"]:
            problems.append(
                f"{report['claimed_more_than_once']} study(ies) processed more than once"
            )
        kinds: Counter[str] = Counter()
        for (_, kind), count in report["results"].items():
            kinds[kind] += count
        if kinds != Counter({"sr": len(studies), "sc": total, "summary": len(studies)}):
            problems.append(f"result objects in the node's database: {dict(kinds)}")
        problems += sink.problems(studies)
    if report["rejections"]:
        problems.append(f"{report['rejections']} refused C-STORE(s) recorded by the node")
    levels, log_examples = log_summary(log_path)
    if levels.get("ERROR") or levels.get("CRITICAL") or levels.get("unparsed"):
        problems.append(f"node log: {dict(levels)}; e.g. {log_examples}")
    if run.status_json.returncode != 0:
        problems.append(f"mura-node status --json failed: {run.status_json.stderr.strip()}")
    if run.exit_code != 0:
        problems.append(f"serve exited with status {run.exit_code} after SIGTERM")
    return problems


def print_memory(sampler: MemorySampler) -> None:
    def mib(kb: int | None) -> str:
        return "-" if not kb else f"{kb / 1024:.0f}"

    print(
        f"{'memory (MiB)':<24} {'RSS after warm-up':>17} {'after ingest':>12} {'peak RSS':>9} "
        f"{'VmHWM':>6} {'RSS at end':>10} {'PSS at end':>10}"
    )
    for _, info in sorted(sampler.processes.items(), key=lambda item: (item[1].started, item[0])):
        print(
            f"{info.label:<24} {mib(info.marks.get('warm')):>17} "
            f"{mib(info.marks.get('ingested')):>12} {mib(info.rss_peak):>9} "
            f"{mib(info.hwm):>6} {mib(info.marks.get('end')):>10} {mib(info.pss.get('end')):>10}"
        )
    marks = sampler.total_marks
    print(
        f"{'node total':<24} {mib(marks.get('warm')):>17} {mib(marks.get('ingested')):>12} "
        f"{mib(sampler.total_peak):>9} {mib(sum(i.hwm for i in sampler.processes.values())):>6} "
        f"{mib(marks.get('end')):>10} {mib(sampler.total_pss.get('end')):>10}"
    )
    pss = sampler.total_pss
    print(
        "  (total peak RSS: the largest sampled sum; total VmHWM: the sum of each process's own "
        "peak, an upper bound; node PSS after warm-up "
        f"{mib(pss.get('warm'))}, after ingest {mib(pss.get('ingested'))} MiB)"
    )


def latency_columns(results: list[SenderResult]) -> str:
    """Median, 99th percentile and largest C-STORE round trip, in milliseconds."""
    values = sorted(v for r in results for v in r.latencies)
    if not values:
        return ""
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
    return f"{statistics.median(values) * 1000:>8.0f} {p99 * 1000:>8.0f} {values[-1] * 1000:>8.0f}"


def print_report(
    args: argparse.Namespace,
    run: NodeRun,
    bare: BareRun | None,
    studies: list[Study],
    sink: Sink,
    sampler: MemorySampler,
    log_path: Path,
    database: str,
) -> None:
    total = sum(len(s.sop_uids) for s in studies)
    ok, _, _ = status_counts(run.results)
    node_seconds = run.end - run.start
    print(
        f"load: {args.senders} senders x {args.instances} instances "
        f"({len(studies)} studies of {args.images_per_study} CR/DX images, "
        f"{args.size} x {args.size} x 16 bit), one association per "
        f"{'sender' if args.one_association else 'study'} ({args.sender}), {database}, "
        f"{os.cpu_count()} CPUs, "
        + ("no worker (ingest only)" if args.ingest_only else "one worker process, untrained model")
    )
    print(
        f"{'receiver':<16} {'instances':>9} {'0x0000':>7} {'wall s':>7} {'inst/s':>7} "
        f"{'vs bare':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    if bare is not None:
        bare_ok, _, _ = status_counts(bare.results)
        print(
            f"{'bare pynetdicom':<16} {total:>9} {bare_ok:>7} {bare.seconds:>7.1f} "
            f"{total / bare.seconds:>7.1f} {1:>7.2f}x {latency_columns(bare.results)}"
        )
    ratio = f"{bare.seconds / node_seconds:>7.2f}x" if bare is not None else f"{'-':>8}"
    print(
        f"{'mura-node':<16} {total:>9} {ok:>7} {node_seconds:>7.1f} {total / node_seconds:>7.1f} "
        f"{ratio} {latency_columns(run.results)}"
    )
    rates = [len(r.statuses) / (r.finished - r.started) for r in run.results]
    print(f"  per sender against the node: {min(rates):.1f} to {max(rates):.1f} inst/s")
    ready = run.report["events"].get("ready", [])
    finished = run.report["events"].get("done", [])
    if ready and finished:

        def since(at: datetime) -> float:
            return (at - run.started_wall).total_seconds()

        span = (max(finished) - min(ready)).total_seconds()
        print(
            f"seconds after the first C-STORE: first study READY {since(min(ready)):.1f}, "
            f"ingest ended {node_seconds:.1f}, last study DONE {since(max(finished)):.1f}, "
            f"last result at the destination {sink.last_at - run.start:.1f}"
        )
        print(
            f"  first READY to last DONE: {span:.1f} s for {total} images, {total / span:.2f} img/s "
            "(processed and delivered)"
        )
    ready_after = run.report["ready_after"]
    if ready_after:
        print(
            f"READY after the last image: median {statistics.median(ready_after):.1f} s, "
            f"largest {ready_after[-1]:.1f} s (quiet period {args.quiet_period:g} s, completion "
            "tick every 0.5 s)"
        )
    reopened = run.report["reopened"]
    print(
        f"studies re-opened by an image that came after the {args.quiet_period:g} s quiet period: "
        f"{reopened}"
        + (
            " (two images of a study arrived further apart than the quiet period)"
            if reopened
            else ""
        )
    )
    if not args.ingest_only:
        print(
            f"destination: {sum(sink.stores.values())} C-STOREs of {len(sink.stores)} distinct "
            f"objects (expected {len(studies)} SR + {total} SC, plus 1 SR + 1 SC of the warm-up "
            "study)"
        )
    print_memory(sampler)
    levels, _ = log_summary(log_path)
    print(f"node log at WARNING and above: {dict(levels)}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--instances", type=int, default=200, help="instances per sender")
    parser.add_argument("--images-per-study", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="rows and columns of each image")
    parser.add_argument(
        "--one-association",
        action="store_true",
        help="each sender sends all its studies on one association (default: one per study)",
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="PostgreSQL server, e.g. postgresql://postgres@127.0.0.1:5432/test: a fresh "
        "database is created on it and dropped afterwards (default: SQLite)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for results")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="memory sampling, s")
    parser.add_argument(
        "--sender",
        choices=["storescu", "pynetdicom"],
        default="storescu",
        help="dcmtk's storescu (default) or a pynetdicom SCU in a process per sender (whose "
        "send_c_store can lose a response under CPU contention; see docs/performance.md)",
    )
    parser.add_argument(
        "--stall-s",
        type=float,
        default=10.0,
        help="a C-STORE without response for this long is a stall: recorded, with thread stacks",
    )
    parser.add_argument(
        "--quiet-period", type=float, default=2.0, help="completion.quiet_period_s (default 2)"
    )
    parser.add_argument(
        "--ingest-only",
        action="store_true",
        help="worker.processes = 0: measure receiving alone (no processing, no results)",
    )
    parser.add_argument("--skip-bare", action="store_true", help="no bare-SCP baseline")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs, data)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mura-bench-load-"))
    drop_database = None
    problems: list[str] = []
    try:
        print(f"working folder {workdir}", file=sys.stderr)
        corpus = make_corpus(
            workdir / "corpus", args.senders, args.instances, args.images_per_study, args.size
        )
        studies = [s for per_sender in corpus for s in per_sender]
        total = sum(len(s.sop_uids) for s in studies)
        print(f"corpus: {total} instances in {len(studies)} studies", file=sys.stderr)

        bare = None  # the same senders against a bare pynetdicom SCP
        if not args.skip_bare:
            bare = run_bare(workdir, corpus, args)
            ok, _, examples = status_counts(bare.results)
            if ok != total or bare.files != total or bare.stalls:
                problems.append(
                    f"bare SCP: {ok}/{total} successes, {bare.files} files, "
                    f"{len(bare.stalls)} stall(s): {examples}"
                )
            print(f"bare SCP: {total / bare.seconds:.1f} inst/s", file=sys.stderr)

        database_url = ""
        if args.database_url:
            database_url, drop_database = fresh_postgres(args.database_url)
        sink = Sink()
        sink.start()
        try:
            run, sampler, log_path = run_node(
                args, workdir, corpus, database_url, sink, args.sample_interval
            )
        finally:
            sink.stop()
        problems += check(run, studies, sink, log_path, args.ingest_only)
        print_report(
            args,
            run,
            bare,
            studies,
            sink,
            sampler,
            log_path,
            "PostgreSQL" if database_url else "SQLite",
        )
        if problems:
            print("FAILED:")
            for problem in problems:
                print(f"  - {problem}")
            return 1
        processed = (
            f"; {len(studies)}/{len(studies)} studies DONE, each processed once; one SR per study "
            "and one SC per image (referencing it) at the destination, each exactly once"
        )
        print(
            f"checks passed: {total}/{total} C-STOREs 0x0000, all in the database with their files"
            f"{'' if args.ingest_only else processed}; no stall, refusal, dead letter or ERROR; "
            "serve exited 0"
        )
        return 0
    except BaseException:
        problems.append("interrupted")
        raise
    finally:
        if drop_database is not None:
            drop_database()
        if args.keep or problems:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
