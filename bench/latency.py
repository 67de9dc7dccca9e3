"""Latency a user feels: a modality sends a 3-image study to Orthanc, Orthanc forwards it to
`mura-node serve` with docs/orthanc/mura-route.lua, and the node's SR is acknowledged by Orthanc.

Two arms, each a real Orthanc (loopback) routing to its own node (one worker process, the
untrained model: speed does not depend on the weights), measured in the same run in interleaved
rounds (A B A B ...):

* release: the node lists Orthanc in ``completion.release_trigger_aes`` and completes the study
  ``--settle`` seconds after Orthanc releases its association;
* quiet (the baseline): the node completes the study after the ``--quiet`` period.

Both nodes run with the node's defaults otherwise (the completion check runs when a study's
settle time or quiet period ends, and the worker and the dispatcher are woken when there is work;
the periodic tick and the polls are 5, 1 and 2 s); Orthanc's StableAge is 1 s (the same in both
arms). Reported per arm, as medians over the rounds, from the start of the
modality's send to Orthanc: the first image at the node, the study READY at the node, the SR
acknowledged by Orthanc (``dispatches.updated_at``, the node's clock); and the ratio release/quiet
of send-to-SR.

    .venv/bin/python -m bench.latency --rounds 3 --quiet 10 --settle 5
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from bench.common import ROOT, free_port, wait_listening
from node.db import Dispatch, Instance, Result, Study, StudyEvent, make_engine
from node.states import DeliveryState, ResultKind, StudyEventName
from tests.support.factory import storescu, write_study
from tests.support.orthanc import Orthanc

ROUTE = ROOT / "docs" / "orthanc" / "mura-route.lua"
STABLE_AGE_S = 1


@dataclass
class Arm:
    """One Orthanc routing to one node, and what each round measured (seconds from the send)."""

    name: str
    orthanc: Orthanc
    serve: subprocess.Popen[bytes]
    db: Engine
    rounds: int = 0
    first_image: list[float] | None = None
    ready: list[float] | None = None
    sr: list[float] | None = None

    def forwards_done(self) -> int:
        jobs = self.orthanc.get("/jobs?expand")
        return sum(1 for j in jobs if j["Type"] == "DicomModalityStore" and j["State"] == "Success")

    def run(self, files: list[Path], timeout: float = 300) -> tuple[float, float, float]:
        """Send ``files`` (one study) to Orthanc; wait for the SR at Orthanc and for Orthanc's
        second forwarding (after the results) to end, so that rounds never overlap."""
        uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        forwards = self.forwards_done()
        start = datetime.now(UTC)
        if storescu(self.orthanc.dicom_port, files, called=self.orthanc.ae_title).returncode != 0:
            raise RuntimeError("storescu to Orthanc failed")
        deadline = time.monotonic() + timeout
        while (sr := self._sr_acknowledged(uid)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no SR in Orthanc after {timeout} s")
            time.sleep(0.1)
        while self.forwards_done() < forwards + 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: Orthanc did not forward the study again")
            time.sleep(0.2)
        with Session(self.db) as session:
            first = session.scalar(
                select(func.min(Instance.received_at))
                .join(Study, Study.id == Instance.study_id)
                .where(Study.study_instance_uid == uid)
            )
            ready = session.scalar(
                select(func.min(StudyEvent.at))
                .join(Study, Study.id == StudyEvent.study_id)
                .where(Study.study_instance_uid == uid, StudyEvent.event == StudyEventName.READY)
            )
        assert first is not None and ready is not None
        return tuple(  # type: ignore[return-value]
            (at - start).total_seconds() for at in (first, ready, sr)
        )

    def _sr_acknowledged(self, uid: str) -> datetime | None:
        with Session(self.db) as session:
            return session.scalar(
                select(Dispatch.updated_at)
                .join(Result, Result.id == Dispatch.result_id)
                .join(Study, Study.id == Result.study_id)
                .where(
                    Study.study_instance_uid == uid,
                    Result.kind == ResultKind.SR,
                    Dispatch.state == DeliveryState.SENT,
                )
            )


def start_arm(name: str, root: Path, completion: str) -> Arm:
    """Orthanc with the routing script, and a node that sends its SR back to it."""
    port = free_port()
    orthanc = Orthanc(
        root / f"orthanc-{name}",
        extra={
            "DicomModalities": {"mura": ["MURA_NODE", "127.0.0.1", port]},
            "LuaScripts": [str(ROUTE)],
            "StableAge": STABLE_AGE_S,
        },
    )
    orthanc.start()
    config = root / f"mura-node-{name}.toml"
    config.write_text(
        f"""
[dicom]
host = "127.0.0.1"
port = {port}
[storage]
data_dir = "{root / f"data-{name}"}"
[completion]
{completion}
[model]
allow_untrained = true
[service]
log_level = "WARNING"
[[destinations]]
name = "orthanc"
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
objects = ["sr"]
"""
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "node", "serve", "--config", str(config)],
        cwd=ROOT,
        start_new_session=True,
    )
    wait_listening(port, serve, timeout=120)
    db = make_engine(f"sqlite:///{root / f'data-{name}' / 'mura-node.db'}")
    return Arm(name, orthanc, serve, db, first_image=[], ready=[], sr=[])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per arm")
    parser.add_argument("--quiet", type=float, default=10.0, help="quiet period of both nodes, s")
    parser.add_argument("--settle", type=float, default=5.0, help="release settle time, s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mura-bench-latency-") as tmp:
        root = Path(tmp)
        quiet = f"quiet_period_s = {args.quiet}"
        arms: list[Arm] = []
        try:
            arms.append(
                start_arm(
                    "release",
                    root,
                    f'{quiet}\nrelease_trigger_aes = ["ORTHANC"]\nrelease_settle_s = {args.settle}',
                )
            )
            arms.append(start_arm("quiet", root, quiet))
            for arm in arms:  # warm-up: the worker loads the model; not measured
                arm.run(_study(root, f"{arm.name}-warm"))
            for index in range(args.rounds):
                for arm in arms if index % 2 == 0 else arms[::-1]:
                    first, ready, sr = arm.run(_study(root, f"{arm.name}-{index}"))
                    assert arm.first_image is not None and arm.ready is not None
                    assert arm.sr is not None
                    arm.first_image.append(first)
                    arm.ready.append(ready)
                    arm.sr.append(sr)
                    print(
                        f"  round {index + 1} {arm.name:>7}: first image at node {first:5.2f} s,"
                        f" READY {ready:5.2f} s, SR at Orthanc {sr:5.2f} s",
                        flush=True,
                    )
        finally:
            for arm in arms:
                arm.serve.send_signal(signal.SIGTERM)
                arm.serve.wait(timeout=120)
                arm.db.dispose()
                arm.orthanc.stop()
        print(
            f"3 CR images of 512 x 512 per study, modality -> Orthanc (StableAge {STABLE_AGE_S} s,"
            f" docs/orthanc/mura-route.lua) -> node (quiet period {args.quiet:g} s, default tick"
            " and polls, one worker, untrained model, CPU) -> SR back to Orthanc;"
            f" medians of {args.rounds} interleaved rounds, seconds from the send:"
        )
        medians = {}
        for arm in arms:
            assert arm.first_image and arm.ready and arm.sr
            medians[arm.name] = statistics.median(arm.sr)
            label = (
                f"release-triggered (settle {args.settle:g} s)"
                if arm.name == "release"
                else f"quiet period ({args.quiet:g} s)"
            )
            print(
                f"  {label:>32}: first image at node {statistics.median(arm.first_image):5.2f},"
                f" READY {statistics.median(arm.ready):5.2f},"
                f" SR at Orthanc {medians[arm.name]:5.2f}"
            )
        print(
            f"send-to-SR, release-triggered / quiet period: "
            f"{medians['release'] / medians['quiet']:.2f}x"
            f" ({medians['quiet'] - medians['release']:.1f} s sooner)"
        )


def _study(root: Path, name: str) -> list[Path]:
    return write_study(root / "corpus" / name, 3, body_part="WRIST", rows=512, columns=512)


if __name__ == "__main__":
    main()
