"""Ingest throughput: the same storescu sends the same corpus to three receivers.

    (a) dcmtk storescp (writes files, no fsync)
    (b) a bare pynetdicom SCP that writes the received bytes and fsyncs each file
    (c) mura-node serve (durable store: fsync, rename, directory fsync, database commit)

Each round sends every corpus to every receiver in turn, on one association, with TCP_NODELAY=1
for the dcmtk programs. The figures are medians over the rounds; the ratios compare receivers
measured in the same run, so they hold on a noisy shared machine where absolute numbers do not.

    .venv/bin/python -m bench.ingest            # 300 x 0.5 MB and 30 x 6 MB, 3 rounds
    .venv/bin/python -m bench.ingest --quick    # 60 x 0.5 MB and 6 x 6 MB, 1 round
    .venv/bin/python -m bench.ingest --large 0 --rounds 7 --receivers pynetdicom mura-node
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from bench.common import PDU, ROOT, free_port, wait_listening
from tests.support.factory import make_radiograph, write


def make_corpora(directory: Path, small: int, large: int) -> dict[str, list[Path]]:
    small_dir = directory / "small"
    small_dir.mkdir(parents=True)
    study = generate_uid()
    small_files = []
    for index in range(small):
        ds = make_radiograph(study_uid=study, rows=512, columns=512, seed=index)  # 0.5 MB of pixels
        small_files.append(write(ds, small_dir / f"{index:04d}.dcm"))
    corpora = {"300 x 0.5 MB" if small == 300 else f"{small} x 0.5 MB": small_files}
    if not large:
        return corpora
    large_dir = directory / "large"
    large_dir.mkdir()
    template = dcmread(get_testdata_file("RG3_UNCR.dcm"))  # 1760 x 1760 CR, 6.2 MB
    study = generate_uid()
    large_files = []
    for index in range(large):
        template.StudyInstanceUID = study
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        large_files.append(write(template, large_dir / f"{index:04d}.dcm"))
    corpora["30 x 6 MB" if large == 30 else f"{large} x 6 MB"] = large_files
    return corpora


BARE_SCP = """
import os, sys, uuid
from pynetdicom import AE, AllStoragePresentationContexts, evt
out = sys.argv[2]
poll = float(sys.argv[3])
def requested(event):
    event.assoc.dul._run_loop_delay = poll
def handle(event):
    path = os.path.join(out, uuid.uuid4().hex + ".dcm")
    with open(path, "wb") as fp:
        fp.write(event.encoded_dataset())
        fp.flush()
        os.fsync(fp.fileno())
    return 0x0000
ae = AE(ae_title="BARE")
ae.maximum_pdu_size = int(sys.argv[4])
ae.require_called_aet = False
ae.supported_contexts = AllStoragePresentationContexts
handlers = [(evt.EVT_C_STORE, handle), (evt.EVT_REQUESTED, requested)]
ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True, evt_handlers=handlers)
"""


@contextmanager
def receiver(kind: str, workdir: Path, poll: float) -> Iterator[tuple[int, str]]:
    port = free_port()
    out = workdir / f"{kind}-{time.monotonic_ns()}"
    out.mkdir()
    env = {**os.environ, "TCP_NODELAY": "1"}
    if kind == "storescp":
        command = ["storescp", "--max-pdu", "131072", "-od", str(out), str(port)]
        title = "STORESCP"
    elif kind == "pynetdicom":
        command = [sys.executable, "-c", BARE_SCP, str(port), str(out), str(poll), str(PDU)]
        title = "BARE"
    else:
        config = out / "mura-node.toml"
        config.write_text(
            f'[dicom]\nhost = "127.0.0.1"\nport = {port}\nmaximum_pdu_size = {PDU}\n'
            f"poll_interval_s = {poll}\n"
            f'[storage]\ndata_dir = "{out / "data"}"\n[service]\nlog_level = "WARNING"\n'
            "[worker]\nprocesses = 0\n"  # receiving alone: no model is configured
        )
        command = [sys.executable, "-m", "node", "serve", "--config", str(config)]
        title = "MURA_NODE"
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield port, title
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(out, ignore_errors=True)


def send(port: int, title: str, files: list[Path]) -> float:
    env = {**os.environ, "TCP_NODELAY": "1"}
    command = ["storescu", "-aec", title, "127.0.0.1", str(port), *map(str, files)]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed against {title}: {result.stderr[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small corpus and one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=300, help="0.5 MB images (default 300)")
    parser.add_argument("--large", type=int, default=30, help="6 MB images (default 30; 0: none)")
    parser.add_argument(
        "--receivers",
        nargs="+",
        choices=["storescp", "pynetdicom", "mura-node"],
        default=["storescp", "pynetdicom", "mura-node"],
        help="receivers to measure (pynetdicom is always measured: the ratios need it)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.001,
        help="pynetdicom's idle sleep, for the bare SCP and mura-node alike (default 0.001, its own)",
    )
    args = parser.parse_args()
    small, large, rounds = (60, 6, 1) if args.quick else (args.small, args.large, args.rounds)
    kinds = [
        k for k in ("storescp", "pynetdicom", "mura-node") if k in {*args.receivers, "pynetdicom"}
    ]
    with tempfile.TemporaryDirectory(prefix="mura-bench-", dir=ROOT / "bench") as tmp:
        workdir = Path(tmp)
        corpora = make_corpora(workdir / "corpus", small, large)
        timings: dict[tuple[str, str], list[float]] = {}
        for round_index in range(rounds):
            for name, files in corpora.items():
                # alternate the order of the receivers from round to round
                for kind in kinds if round_index % 2 == 0 else reversed(kinds):
                    with receiver(kind, workdir, args.poll_interval) as (port, title):
                        timings.setdefault((name, kind), []).append(send(port, title, files))
            print(f"round {round_index + 1}/{rounds} done", file=sys.stderr)
        print(
            f"storescu -> receiver, one association, median of {rounds} round(s), "
            f"{os.cpu_count()} CPUs, pynetdicom poll interval {args.poll_interval} s"
        )
        reference = "storescp" if "storescp" in kinds else "pynetdicom"
        print(
            f"{'corpus':<14} {'receiver':<11} {'inst/s':>8} {'MB/s':>7} {'vs ' + reference:>12} {'vs bare pynetdicom':>19}"
        )
        for name, files in corpora.items():
            size_mb = sum(f.stat().st_size for f in files) / 1e6
            rate: dict[str, float] = {}
            for kind in kinds:
                seconds = statistics.median(timings[(name, kind)])
                rate[kind] = len(files) / seconds
            for kind in kinds:
                print(
                    f"{name:<14} {kind:<11} {rate[kind]:>8.1f} {rate[kind] * size_mb / len(files):>7.1f}"
                    f" {rate[kind] / rate[reference]:>11.2f}x {rate[kind] / rate['pynetdicom']:>18.2f}x"
                )


if __name__ == "__main__":
    main()
