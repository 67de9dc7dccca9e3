"""The command line: `python -m bench.load --help`."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import bench.load
from bench.load.bare import run_bare
from bench.load.checks import check
from bench.load.corpus import make_corpus
from bench.load.report import print_report
from bench.load.senders import status_counts
from bench.load.serve import fresh_postgres, run_node
from bench.load.sink import Sink


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load",
        description=bench.load.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
