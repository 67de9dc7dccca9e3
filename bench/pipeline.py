"""End-to-end throughput and latency: a burst of studies through `mura-node serve` into Orthanc.

A real Orthanc (loopback) is the destination; dcmtk's storescu sends ``--studies`` studies of
three 512 x 512 CR images each, one association per study, as fast as it can; `serve` runs with
``--workers`` worker processes (1, the node's default; each runs the model on its share of the
cores) and the untrained model (speed does not depend on the weights); a quiet period of 1 s, and
the node's defaults otherwise (a study is checked when its quiet period ends, and the worker and
the dispatcher are woken when there is work for them, so the periodic tick and the polls need
not be short).

Reported, in the same run:
(a) node throughput: images per second from the first study becoming READY to the last study's
    results acknowledged by Orthanc, against the engine's bare throughput (``InferenceEngine.predict``
    on ready tensors of the same images, one call per study, in this process while the node is
    idle); target >= 0.85x. ``--rounds`` rounds alternate the two (engine alone, then the node on
    a fresh burst) with one `serve` throughout; the median ratio is the figure;
(b) latency per study from READY to its SR acknowledged by Orthanc, against the engine's time for
    that study's images + 1 s (the median round).

Each round also prints the CPU seconds that `serve` (the SCP and the completion scheduler), each
of its child processes (workers, dispatcher) and Orthanc used from the first storescu of the
burst to the last result in Orthanc, against the engine's own in the bare run: on a machine where
the model alone keeps every core busy, every other CPU second lengthens the burst.

Each round also prints how far apart the first and the last study of the burst became READY:
storescu sends one study after the other, and a study is READY a quiet period after its last
image, so the node cannot finish before the last study arrives; when that spread exceeds the
engine's time for the whole burst, (a) measures arrival as much as the node.

    .venv/bin/python -m bench.pipeline --studies 8 --rounds 3 [--workers 2]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.common import ROOT, children_of, cpu_seconds
from node.config import ModelConfig
from node.db import Dispatch, Result, Study, StudyEvent, make_engine
from node.inference.engine import InferenceEngine
from node.inference.imaging import dicom_file_to_tensor
from tests.support.factory import free_port, storescu, write_study
from tests.support.orthanc import Orthanc

CONFIG = """
[dicom]
host = "127.0.0.1"
port = {port}
[storage]
data_dir = "{data}"
[completion]
quiet_period_s = 1.0
[model]
allow_untrained = true
[worker]
processes = {workers}
[service]
log_level = "WARNING"
[[destinations]]
name = "orthanc"
ae_title = "{ae_title}"
host = "127.0.0.1"
port = {orthanc_port}
objects = ["sr", "sc"]
"""


def process_tree(serve: int, orthanc: int) -> dict[int, str]:
    """``serve``, its child processes (by their process titles) and Orthanc: pid -> name."""
    names = {serve: "serve (SCP, scheduler)", orthanc: "Orthanc"}
    for child in children_of(serve):
        try:
            title = Path(f"/proc/{child}/cmdline").read_text().split("\0")[0]
        except OSError:
            continue
        names[child] = title.removeprefix("mura-node ") or str(child)
    return names


def bare_engine(engine: InferenceEngine, studies: list[list[Path]]) -> tuple[list[float], float]:
    """Seconds the engine alone takes for each study's images (ready tensors, one call each),
    and the CPU seconds this process used for them."""
    tensors = [torch.stack([dicom_file_to_tensor(p) for p in files]) for files in studies]
    engine.predict(tensors[0])  # warm-up
    per_study = []
    cpu = time.process_time()
    for batch in tensors:
        start = time.perf_counter()
        engine.predict(batch)
        per_study.append(time.perf_counter() - start)
    return per_study, time.process_time() - cpu


def node_times(data: Path, studies: list[list[Path]]) -> tuple[float, float, list[float]]:
    """From the node's database: seconds from the first study READY to the last object
    acknowledged by Orthanc, seconds from the first study READY to the last, and each study's
    READY -> SR acknowledged."""
    db = make_engine(f"sqlite:///{data / 'mura-node.db'}")
    with Session(db) as session:
        ready = dict(
            session.execute(
                select(Study.study_instance_uid, StudyEvent.at)
                .join(StudyEvent, StudyEvent.study_id == Study.id)
                .where(StudyEvent.event == "ready")
            ).all()
        )
        acknowledged: dict[str, list[datetime]] = {}
        reports: dict[str, datetime] = {}
        for uid, kind, at in session.execute(
            select(Study.study_instance_uid, Result.kind, Dispatch.updated_at)
            .join(Result, Result.study_id == Study.id)
            .join(Dispatch, Dispatch.result_id == Result.id)
            .where(Dispatch.state == "SENT")
        ):
            acknowledged.setdefault(uid, []).append(at)
            if kind == "sr":
                reports[uid] = at
    db.dispose()
    uids = [str(dcmread(f[0], stop_before_pixels=True).StudyInstanceUID) for f in studies]
    first_ready = min(ready[u] for u in uids)
    last_done = max(max(acknowledged[u]) for u in uids)
    latencies = [(reports[u] - ready[u]).total_seconds() for u in uids]
    spread = (max(ready[u] for u in uids) - first_ready).total_seconds()
    return (last_done - first_ready).total_seconds(), spread, latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of the node (default 1, the node's default); each runs the model "
        "on its share of the cores",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mura-bench-pipeline-") as tmp:
        root = Path(tmp)

        def burst(name: str) -> list[list[Path]]:
            return [
                write_study(
                    root / "corpus" / name / f"s{i}",
                    3,
                    body_part="WRIST",
                    rows=512,
                    columns=512,
                    prefix=f"s{i}_",
                )
                for i in range(args.studies)
            ]

        engine = InferenceEngine.from_config(ModelConfig(allow_untrained=True))
        orthanc = Orthanc(root / "orthanc")
        orthanc.start()
        port = free_port()
        config = root / "mura-node.toml"
        config.write_text(
            CONFIG.format(
                port=port,
                data=root / "data",
                ae_title=orthanc.ae_title,
                orthanc_port=orthanc.dicom_port,
                workers=args.workers,
            )
        )
        serve = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(config)],
            cwd=ROOT,
            start_new_session=True,
        )
        rounds: list[tuple[list[float], float, float, list[float]]] = []
        cpu_rounds: list[tuple[float, dict[str, float]]] = []
        try:
            deadline = time.monotonic() + 120
            warm_up = write_study(
                root / "corpus" / "warm", 1, body_part="WRIST", rows=512, columns=512
            )
            while storescu(port, warm_up).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("serve did not start")
                time.sleep(0.5)
            expected = 2  # the warm-up study gives 1 SR + 1 SC
            while len(orthanc.get("/instances")) < expected:
                time.sleep(0.5)
            for index in range(args.rounds):
                # A then B in each round: the engine alone while the node is idle, then the node.
                studies = burst(f"round{index}")
                per_study, engine_cpu = bare_engine(engine, studies)
                assert orthanc.process is not None
                tree = process_tree(serve.pid, orthanc.process.pid)
                before = {pid: cpu_seconds(pid) for pid in tree}
                for files in studies:
                    if storescu(port, files).returncode != 0:
                        raise RuntimeError("storescu failed")
                expected += 4 * len(studies)
                while len(orthanc.get("/instances")) < expected:
                    if time.monotonic() > deadline + 600 * (index + 1):
                        raise RuntimeError("results did not arrive")
                    time.sleep(0.5)
                used = {name: cpu_seconds(pid) - before[pid] for pid, name in tree.items()}
                cpu_rounds.append((engine_cpu, used))
                elapsed, spread, latencies = node_times(root / "data", studies)
                rounds.append((per_study, elapsed, spread, latencies))
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=120)
            orthanc.stop()

        images = 3 * args.studies
        print(
            f"{args.studies} studies x 3 CR images of 512 x 512, {args.workers} worker "
            f"process(es), untrained model, CPU, {args.rounds} round(s) of engine alone "
            f"({torch.get_num_threads()} threads) then node"
        )
        print("round  engine img/s  node img/s  node/engine  READY first to last  engine time")
        ratios = []
        for index, (per_study, elapsed, spread, _latencies) in enumerate(rounds):
            bare_rate, node_rate = images / sum(per_study), images / elapsed
            ratios.append(node_rate / bare_rate)
            print(
                f"{index + 1:5d}  {bare_rate:12.2f}  {node_rate:10.2f}  {ratios[-1]:10.2f}x  "
                f"{spread:17.2f} s  {sum(per_study):9.2f} s"
            )
        print(
            f"(a) node throughput / engine bare: median {statistics.median(ratios):.2f}x "
            "(target >= 0.85x)"
        )
        engine_cpu, used = cpu_rounds[len(rounds) // 2]
        print(
            f"CPU seconds in round {len(rounds) // 2 + 1}, from the first storescu to the last "
            f"result in Orthanc: engine alone {engine_cpu:.2f} for the same images; node "
            + ", ".join(
                f"{name} {seconds:.2f}" for name, seconds in sorted(used.items()) if seconds > 0
            )
            + f"; all {sum(used.values()):.2f}"
        )
        per_study, _elapsed, _spread, latencies = rounds[len(rounds) // 2]
        budget = [t + 1.0 for t in per_study]
        print(
            f"(b) READY -> SR in Orthanc (round {len(rounds) // 2 + 1}): median "
            f"{statistics.median(latencies):.2f} s, max {max(latencies):.2f} s; engine time per "
            f"study median {statistics.median(per_study):.2f} s; within engine + 1 s: "
            f"{sum(lat <= b for lat, b in zip(latencies, budget, strict=True))}/{len(latencies)}"
            " studies"
        )


if __name__ == "__main__":
    main()
