"""Memory of `mura-node serve`'s main process with model cards configured.

The main process runs the SCP, the scheduler and the supervision of the worker and dispatcher
processes; it never runs the model, but it checks the model cards at start. Two ways of checking,
started in turn (alternating, ``--rounds`` each), each with one worker process and the same card
(untrained DenseNet-169 weights packed with ``pack_checkpoint``, 51 MB of safetensors):

    verify    the node as it is: ``verify_weights`` (hash, safetensors header; no PyTorch)
    load      the earlier check, for comparison: ``load_weights`` in the main process (PyTorch
              imported, every tensor read)

Figures: the main process's resident set (VmRSS) and its private part (RssAnon), in MiB, read
from /proc once the node listens and ``--settle`` seconds have passed; medians over the rounds.
The worker's VmRSS is shown for information (it loads PyTorch and the model either way).

    .venv/bin/python -m bench.serve_memory               # 3 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, children_of, free_port, wait_listening

BUDGET_MIB = 200
# The earlier check, in the main process: the cards' weights read with PyTorch.
LOAD_IN_PROCESS = """
import sys
import node.inference.cards as cards
cards.verify_weights = lambda card: cards.load_weights(card) and None
from node.cli import main
sys.exit(main(sys.argv[1:]))
"""


def status_kib(pid: int, field: str) -> int:
    """A field of /proc/<pid>/status in KiB (VmRSS, RssAnon, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(kind: str, card: Path, workdir: Path, settle: float) -> tuple[float, float, float]:
    """(main VmRSS, main RssAnon, largest child VmRSS) in MiB, for one start of serve."""
    port = free_port()
    out = workdir / f"{kind}-{time.monotonic_ns()}"
    out.mkdir()
    config = out / "mura-node.toml"
    config.write_text(
        f'[dicom]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[storage]\ndata_dir = "{out / "data"}"\n[service]\nlog_level = "WARNING"\n'
        f'[worker]\nprocesses = 1\n[model]\ncards = ["{card}"]\n'
    )
    arguments = ["serve", "--config", str(config)]
    if kind == "verify":
        command = [sys.executable, "-m", "node", *arguments]
    else:
        command = [sys.executable, "-c", LOAD_IN_PROCESS, *arguments]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_listening(port, process, timeout=300)
        time.sleep(settle)
        rss = status_kib(process.pid, "VmRSS") / 1024
        private = status_kib(process.pid, "RssAnon") / 1024
        children = [status_kib(child, "VmRSS") / 1024 for child in children_of(process.pid)]
        return rss, private, max(children, default=0.0)
    finally:
        process.terminate()
        process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after listening")
    args = parser.parse_args()
    from node.inference.cards import pack_checkpoint
    from node.inference.model import MuraDenseNet

    kinds = ["verify", "load"]
    figures: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="mura-bench-", dir=ROOT / "bench") as tmp:
        workdir = Path(tmp)
        card = pack_checkpoint(MuraDenseNet().state_dict(), workdir, name="bench", version="1")
        for round_index in range(args.rounds):
            for kind in kinds if round_index % 2 == 0 else reversed(kinds):
                figures[kind].append(measure(kind, card.path, workdir, args.settle))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    print(
        f"serve with one model card and one worker, median of {args.rounds} start(s), "
        f"{os.cpu_count()} CPUs; budget {BUDGET_MIB} MiB for the main process"
    )
    print(f"{'card check':<11} {'main VmRSS':>11} {'main RssAnon':>13} {'worker VmRSS':>13}")
    for kind in kinds:
        rss, private, child = (statistics.median(f[i] for f in figures[kind]) for i in range(3))
        print(f"{kind:<11} {rss:>7.0f} MiB {private:>9.0f} MiB {child:>9.0f} MiB")


if __name__ == "__main__":
    main()
