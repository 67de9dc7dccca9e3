"""The node under load: its configuration and database, the warm-up study, and the run of
`mura-node serve` in a subprocess while the senders send."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import ROOT, free_port, wait_listening
from bench.load.corpus import CR, EXPLICIT_LITTLE, Study, make_corpus
from bench.load.memory import MemorySampler
from bench.load.senders import SenderResult, Stall, send_all
from bench.load.sink import Sink


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
