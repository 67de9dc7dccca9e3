"""What is checked at the end of a run: every C-STORE answered 0x0000, every study DONE once,
every result at the destination once, no dead letter, no ERROR in the log, a clean exit."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench.load.corpus import Study
from bench.load.senders import status_counts
from bench.load.serve import NodeRun, log_summary
from bench.load.sink import Sink


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
