"""The report: rates, latencies, memory and the ratio node/bare, printed to stdout."""

from __future__ import annotations

import argparse
import os
import statistics
from datetime import datetime
from pathlib import Path

from bench.load.bare import BareRun
from bench.load.corpus import Study
from bench.load.memory import MemorySampler
from bench.load.senders import SenderResult, status_counts
from bench.load.serve import NodeRun, log_summary
from bench.load.sink import Sink


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
