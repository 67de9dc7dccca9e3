"""End-to-end throughput and latency: a burst of studies through `mura-node serve` into Orthanc.

A real Orthanc (loopback) is the destination; dcmtk's storescu sends ``--studies`` studies of
three 512 x 512 CR images each, one association per study, as fast as it can; `serve` runs with one
worker process and the untrained model (speed does not depend on the weights).

Reported, in the same run:
(a) node throughput: images per second from the first study becoming READY to the last study's
    results acknowledged by Orthanc, against the engine's bare throughput (``InferenceEngine.predict``
    on ready tensors of the same images, in this process while the node is idle); target >= 0.85x;
(b) latency per study from READY to its SR acknowledged by Orthanc, against the engine's time for
    that study's images + 1 s.

    .venv/bin/python -m bench.pipeline --studies 8
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.common import ROOT
from node.config import ModelConfig
from node.db import Dispatch, Result, Study, StudyEvent, make_engine
from node.inference.engine import InferenceEngine
from node.inference.imaging import dicom_file_to_tensor
from tests.support.factory import free_port, storescu, write_study
from tests.support.orthanc import Orthanc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mura-bench-pipeline-") as tmp:
        root = Path(tmp)
        studies = [
            write_study(
                root / "corpus" / f"s{i}",
                3,
                body_part="WRIST",
                rows=512,
                columns=512,
                prefix=f"s{i}_",
            )
            for i in range(args.studies)
        ]
        # (a)/(b) baseline: the engine alone on the same images, same process count of threads.
        engine = InferenceEngine.from_config(ModelConfig(allow_untrained=True))
        tensors = [[dicom_file_to_tensor(p) for p in files] for files in studies]
        engine.predict(torch.stack(tensors[0]))  # warm-up
        per_study = []
        for batch in tensors:
            start = time.perf_counter()
            engine.predict(torch.stack(batch))
            per_study.append(time.perf_counter() - start)
        bare_rate = 3 * len(studies) / sum(per_study)
        del engine

        orthanc = Orthanc(root / "orthanc")
        orthanc.start()
        port = free_port()
        config = root / "mura-node.toml"
        config.write_text(
            f"""
[dicom]
host = "127.0.0.1"
port = {port}
[storage]
data_dir = "{root / "data"}"
[completion]
quiet_period_s = 1.0
tick_interval_s = 0.1
[model]
allow_untrained = true
[worker]
poll_interval_s = 0.1
[dispatch]
poll_interval_s = 0.1
[service]
log_level = "WARNING"
[[destinations]]
name = "orthanc"
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
objects = ["sr", "sc"]
"""
        )
        serve = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(config)],
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            warm_up = write_study(
                root / "corpus" / "warm", 1, body_part="WRIST", rows=512, columns=512
            )
            while storescu(port, warm_up).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("serve did not start")
                time.sleep(0.5)
            time.sleep(8)  # let the worker process load the model before the burst
            for files in studies:
                if storescu(port, files).returncode != 0:
                    raise RuntimeError("storescu failed")
            expected = 2 + 4 * len(studies)  # the warm-up study gives 1 SR + 1 SC
            while len(orthanc.get("/instances")) < expected:
                if time.monotonic() > deadline + 600:
                    raise RuntimeError("results did not arrive")
                time.sleep(0.5)
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=120)
            orthanc.stop()

        db = make_engine(f"sqlite:///{root / 'data' / 'mura-node.db'}")
        with Session(db) as session:
            ready = dict(
                session.execute(
                    select(Study.study_instance_uid, StudyEvent.at)
                    .join(StudyEvent, StudyEvent.study_id == Study.id)
                    .where(StudyEvent.event == "ready")
                ).all()
            )
            acknowledged: dict[str, list] = {}
            reports: dict[str, object] = {}
            for uid, kind, at in session.execute(
                select(Study.study_instance_uid, Result.kind, Dispatch.updated_at)
                .join(Result, Result.study_id == Study.id)
                .join(Dispatch, Dispatch.result_id == Result.id)
                .where(Dispatch.state == "SENT")
            ):
                acknowledged.setdefault(uid, []).append(at)
                if kind == "sr":
                    reports[uid] = at
        from pydicom import dcmread

        uids = [
            str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID) for files in studies
        ]
        first_ready = min(ready[u] for u in uids)
        last_done = max(max(acknowledged[u]) for u in uids)
        node_rate = 3 * len(studies) / (last_done - first_ready).total_seconds()
        latencies = [(reports[u] - ready[u]).total_seconds() for u in uids]  # type: ignore[operator]
        print(
            f"{len(studies)} studies x 3 CR images of 512 x 512, one worker process, untrained model, CPU"
        )
        print(
            f"(a) node throughput {node_rate:.2f} img/s, engine bare {bare_rate:.2f} img/s: {node_rate / bare_rate:.2f}x (target >= 0.85x)"
        )
        budget = [t + 1.0 for t in per_study]
        print(
            f"(b) READY -> SR in Orthanc: median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s; "
            f"engine time per study median {statistics.median(per_study):.2f} s; "
            f"within engine + 1 s: {sum(lat <= b for lat, b in zip(latencies, budget, strict=True))}/{len(studies)} studies"
        )
        for index, (latency, engine_s) in enumerate(zip(latencies, per_study, strict=True)):
            print(f"    study {index + 1}: latency {latency:.2f} s, engine {engine_s:.2f} s")


if __name__ == "__main__":
    main()
