"""`mura-node status`: what the queue holds, read from the database (works while `serve` runs).

No patient name, ID or other patient data is read; studies are shown by a shortened
StudyInstanceUID (the full UID is in ``--json``, for scripts).
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine, case, func, select
from sqlalchemy.orm import Session

from node.clock import short_uid
from node.db import Dispatch, IngestRejection, Instance, Result, Study, StudyEvent, StudyState
from node.outbox import AFTER_UNANSWERED
from node.profiles import Role

WAITING = (StudyState.RECEIVING, StudyState.READY, StudyState.PROCESSING, StudyState.DISPATCHING)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def _study_row(study: Study, images: int, others: int) -> dict[str, Any]:
    return {
        "study": short_uid(study.study_instance_uid),
        "study_instance_uid": study.study_instance_uid,
        "study_type": study.study_type,
        "images": images,
        "other_objects": others,
        "state": study.state,
        "generation": study.generation,
        "opened_at": _iso(study.opened_at),
        "last_received_at": _iso(study.last_received_at),
        "state_changed_at": _iso(study.state_changed_at),
        "reason": study.reason,
    }


DELIVERY_STATES = ("PENDING", "SENDING", "RETRY", "SENT", "DEAD")


def state_counts(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    """Studies by state and deliveries by state, every state present (for status and metrics)."""
    studies = {state.value: 0 for state in StudyState}
    for state, count in session.execute(select(Study.state, func.count()).group_by(Study.state)):
        studies[state] = int(count)
    deliveries = dict.fromkeys(DELIVERY_STATES, 0)
    for state, count in session.execute(
        select(Dispatch.state, func.count()).group_by(Dispatch.state)
    ):
        deliveries[state] = int(count)
    return studies, deliveries


def collect_status(
    engine: Engine,
    now: datetime,
    limit: int = 20,
    only_state: str | None = None,
    only_study: str | None = None,
) -> dict[str, Any]:
    """The status report as plain data (the --json output)."""
    with Session(engine) as session:
        counts, deliveries = state_counts(session)
        stored, ignored = session.execute(
            select(
                func.coalesce(func.sum(case((Instance.role == Role.ANALYSE, 1), else_=0)), 0),
                func.coalesce(func.sum(case((Instance.role == Role.IGNORE, 1), else_=0)), 0),
            )
        ).one()
        oldest = session.scalar(
            select(Study)
            .where(Study.state.in_(WAITING))
            .order_by(Study.opened_at, Study.id)
            .limit(1)
        )
        listed = select(Study)
        if only_state:
            listed = listed.where(Study.state == only_state.upper())
        if only_study:
            listed = listed.where(Study.study_instance_uid.contains(only_study))
        recent = session.scalars(
            listed.order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)
        ).all()
        failed = session.scalars(
            select(Study)
            .where(Study.state == StudyState.FAILED)
            .order_by(Study.state_changed_at.desc())
            .limit(limit)
        ).all()
        ids = {s.id for s in (*recent, *failed)}
        per_study: dict[int, tuple[int, int]] = {}
        if ids:
            rows = session.execute(
                select(
                    Instance.study_id,
                    func.sum(case((Instance.role == Role.ANALYSE, 1), else_=0)),
                    func.sum(case((Instance.role == Role.IGNORE, 1), else_=0)),
                )
                .where(Instance.study_id.in_(ids))
                .group_by(Instance.study_id)
            )
            per_study = {row[0]: (int(row[1] or 0), int(row[2] or 0)) for row in rows}
        since = now - timedelta(hours=24)
        rejected = session.scalar(select(func.count()).where(IngestRejection.at >= since)) or 0
        rejections = session.scalars(
            select(IngestRejection)
            .where(IngestRejection.at >= since)
            .order_by(IngestRejection.at.desc())
            .limit(limit)
        ).all()
        after_unanswered = session.execute(
            select(StudyEvent, Study.study_instance_uid)
            .join(Study, Study.id == StudyEvent.study_id)
            .where(StudyEvent.event.in_(AFTER_UNANSWERED), StudyEvent.at >= since)
            .order_by(StudyEvent.at.desc(), StudyEvent.id.desc())
            .limit(limit)
        ).all()
        dead = session.execute(
            select(Dispatch, Result.kind, Study.study_instance_uid)
            .join(Result, Result.id == Dispatch.result_id)
            .join(Study, Study.id == Result.study_id)
            .where(Dispatch.state == "DEAD")
            .order_by(Dispatch.updated_at.desc())
            .limit(limit)
        ).all()
        return {
            "generated_at": _iso(now),
            "deliveries": deliveries,
            "dead_letters": [
                {
                    "study": short_uid(uid),
                    "study_instance_uid": uid,
                    "object": kind,
                    "destination": d.destination,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                    "since": _iso(d.updated_at),
                }
                for d, kind, uid in dead
            ],
            "after_unanswered": [
                {"at": _iso(e.at), "study": short_uid(uid), "event": e.event, "detail": e.detail}
                for e, uid in after_unanswered
            ],
            "studies_by_state": counts,
            "instances": {"stored": int(stored), "ignored": int(ignored)},
            "oldest_waiting": None
            if oldest is None
            else {
                "study": short_uid(oldest.study_instance_uid),
                "study_instance_uid": oldest.study_instance_uid,
                "state": oldest.state,
                "since": _iso(oldest.opened_at),
                "waiting_s": round((now - oldest.opened_at).total_seconds(), 1),
            },
            "recent_studies": [_study_row(s, *per_study.get(s.id, (0, 0))) for s in recent],
            "failed_studies": [_study_row(s, *per_study.get(s.id, (0, 0))) for s in failed],
            "rejected_last_24h": {
                "count": int(rejected),
                "recent": [
                    {
                        "at": _iso(r.at),
                        "calling_ae_title": r.calling_ae_title,
                        "status": f"0x{r.status:04X}",
                        "reason": r.reason,
                    }
                    for r in rejections
                ],
            },
        }


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _clock(value: str | None) -> str:
    return "-" if value is None else value[:19].replace("T", " ")


STATE_STYLES = {
    "RECEIVING": "cyan",
    "READY": "yellow",
    "PROCESSING": "bold yellow",
    "DISPATCHING": "blue",
    "DONE": "green",
    "IGNORED": "dim",
    "FAILED": "bold red",
    "DEAD": "bold red",
}


def _table(headers: list[str], rows: list[list[str]], state_column: int | None = None) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        cells: list[Text] = [Text(cell) for cell in row]
        if state_column is not None:
            cells[state_column].stylize(STATE_STYLES.get(row[state_column], ""))
        table.add_row(*cells)
    return table


def _study_table(studies: list[dict[str, Any]]) -> Table:
    headers = [
        "STUDY",
        "TYPE",
        "IMAGES",
        "OTHER",
        "STATE",
        "OPENED (UTC)",
        "LAST ARRIVAL",
        "CHANGED",
        "REASON",
    ]
    rows = [
        [
            s["study"],
            s["study_type"] or "-",
            str(s["images"]),
            str(s["other_objects"]),
            s["state"],
            _clock(s["opened_at"]),
            _clock(s["last_received_at"])[11:],
            _clock(s["state_changed_at"])[11:],
            s["reason"] or "",
        ]
        for s in studies
    ]
    return _table(headers, rows, state_column=4)


def status_view(report: dict[str, Any], database: str) -> Group:
    """The report for people: rich tables (coloured on a terminal, plain text otherwise)."""
    parts: list[Any] = [
        Text(
            f"mura-node status at {_clock(report['generated_at'])} UTC, database {database}",
            style="bold",
        ),
        Text(""),
        Text("Studies by state", style="bold"),
    ]
    counts = report["studies_by_state"]
    parts.append(_table(["STATE", "STUDIES"], [[state, str(n)] for state, n in counts.items()], 0))
    instances = report["instances"]
    parts.append(
        Text(
            f"Instances: {instances['stored']} images stored, {instances['ignored']} other objects ignored"
        )
    )
    oldest = report["oldest_waiting"]
    parts.append(
        Text(
            f"Oldest waiting study: {oldest['study']} ({oldest['state']}), "
            f"waiting {_duration(oldest['waiting_s'])} since {_clock(oldest['since'])} UTC"
            if oldest
            else "Oldest waiting study: none"
        )
    )
    parts += [Text(""), Text("Recent studies (newest arrival first)", style="bold")]
    parts.append(
        _study_table(report["recent_studies"]) if report["recent_studies"] else Text("  none yet")
    )
    parts += [Text(""), Text("Failed studies", style="bold")]
    parts.append(
        _study_table(report["failed_studies"]) if report["failed_studies"] else Text("  none")
    )
    deliveries = report["deliveries"]
    parts += [
        Text(""),
        Text("Deliveries: " + ", ".join(f"{n} {state.lower()}" for state, n in deliveries.items())),
    ]
    if report["dead_letters"]:
        parts.append(Text("Dead letters (re-queue with `mura-node retry`):", style="bold red"))
        parts.append(
            _table(
                ["STUDY", "OBJECT", "DESTINATION", "ATTEMPTS", "SINCE (UTC)", "LAST ERROR"],
                [
                    [
                        d["study"],
                        d["object"],
                        d["destination"],
                        str(d["attempts"]),
                        _clock(d["since"]),
                        d["last_error"] or "",
                    ]
                    for d in report["dead_letters"]
                ],
            )
        )
    if report["after_unanswered"]:
        parts.append(Text("After a C-STORE without response (last 24 h):", style="bold"))
        parts.append(
            _table(
                ["AT (UTC)", "STUDY", "EVENT", "DETAIL"],
                [
                    [_clock(e["at"]), e["study"], e["event"], e["detail"] or ""]
                    for e in report["after_unanswered"]
                ],
            )
        )
    rejected = report["rejected_last_24h"]
    parts += [Text(""), Text(f"Refused C-STOREs in the last 24 h: {rejected['count']}")]
    if rejected["recent"]:
        parts.append(
            _table(
                ["AT (UTC)", "FROM", "STATUS", "REASON"],
                [
                    [_clock(r["at"]), r["calling_ae_title"], r["status"], r["reason"]]
                    for r in rejected["recent"]
                ],
            )
        )
    return Group(*parts)


def render_status(report: dict[str, Any], database: str) -> str:
    return as_text(status_view(report, database))


def study_history(engine: Engine, uid_or_prefix: str) -> dict[str, Any] | None:
    """Everything the node knows about one study: its row, instances, history, results and
    deliveries (no patient data). A unique prefix or suffix of the StudyInstanceUID is enough."""
    with Session(engine) as session:
        matches = session.scalars(
            select(Study).where(
                (Study.study_instance_uid == uid_or_prefix)
                | Study.study_instance_uid.startswith(uid_or_prefix)
                | Study.study_instance_uid.endswith(uid_or_prefix)
            )
        ).all()
        if len(matches) != 1:
            return None if not matches else {"ambiguous": [s.study_instance_uid for s in matches]}
        study = matches[0]
        instances = session.scalars(
            select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)
        ).all()
        events = session.scalars(
            select(StudyEvent).where(StudyEvent.study_id == study.id).order_by(StudyEvent.id)
        ).all()
        results = session.scalars(
            select(Result).where(Result.study_id == study.id).order_by(Result.id)
        ).all()
        deliveries = session.execute(
            select(Dispatch, Result.kind)
            .join(Result, Result.id == Dispatch.result_id)
            .where(Result.study_id == study.id)
            .order_by(Dispatch.id)
        ).all()
        return {
            "study_instance_uid": study.study_instance_uid,
            "state": study.state,
            "study_type": study.study_type,
            "reason": study.reason,
            "generation": study.generation,
            "first_received_at": _iso(study.first_received_at),
            "instances": [
                {
                    "sop_instance_uid": i.sop_instance_uid,
                    "role": i.role,
                    "sop_class_uid": i.sop_class_uid,
                    "transfer_syntax_uid": i.transfer_syntax_uid,
                    "from": i.calling_ae_title,
                    "received_at": _iso(i.received_at),
                    "revision": i.revision,
                    "body_part_examined": i.body_part_examined,
                    "anatomic_region": i.anatomic_region,
                    "study_type": i.study_type,
                }
                for i in instances
            ],
            "history": [{"at": _iso(e.at), "event": e.event, "detail": e.detail} for e in events],
            "results": [
                {
                    "kind": r.kind,
                    "generation": r.generation,
                    "sop_instance_uid": r.sop_instance_uid,
                    "file": r.file_path,
                }
                for r in results
            ],
            "deliveries": [
                {
                    "object": kind,
                    "destination": d.destination,
                    "state": d.state,
                    "attempts": d.attempts,
                    "last_status": None if d.last_status is None else f"0x{d.last_status:04X}",
                    "last_error": d.last_error,
                    "unanswered": d.unanswered,
                    "updated_at": _iso(d.updated_at),
                }
                for d, kind in deliveries
            ],
        }


def history_view(history: dict[str, Any]) -> Group:
    parts: list[Any] = [
        Text(f"study {history['study_instance_uid']}", style="bold"),
        Text(
            f"  state {history['state']} (generation {history['generation']}), "
            f"type {history['study_type'] or '-'}"
        ),
        Text(f"  reason {history['reason'] or '-'}"),
        Text(""),
        Text("History", style="bold"),
        _table(
            ["AT (UTC)", "EVENT", "DETAIL"],
            [[_clock(e["at"]), e["event"], e["detail"] or ""] for e in history["history"]],
        ),
        Text(""),
        Text("Instances", style="bold"),
        _table(
            [
                "RECEIVED (UTC)",
                "ROLE",
                "FROM",
                "REV",
                "BODY PART",
                "ANATOMIC REGION",
                "TYPE",
                "SOP INSTANCE UID",
            ],
            [
                [
                    _clock(i["received_at"]),
                    i["role"],
                    i["from"],
                    str(i["revision"]),
                    i["body_part_examined"] or "-",
                    i["anatomic_region"] or "-",
                    i["study_type"] or "-",
                    i["sop_instance_uid"],
                ]
                for i in history["instances"]
            ],
        ),
        Text(""),
        Text("Results", style="bold"),
    ]
    parts.append(
        _table(
            ["KIND", "GEN", "SOP INSTANCE UID", "FILE"],
            [
                [r["kind"], str(r["generation"]), r["sop_instance_uid"], r["file"]]
                for r in history["results"]
            ],
        )
        if history["results"]
        else Text("  none")
    )
    parts += [Text(""), Text("Deliveries", style="bold")]
    parts.append(
        _table(
            ["OBJECT", "DESTINATION", "STATE", "ATTEMPTS", "UPDATED (UTC)", "LAST ERROR"],
            [
                [
                    d["object"],
                    d["destination"],
                    d["state"],
                    str(d["attempts"]),
                    _clock(d["updated_at"]),
                    d["last_error"] or "",
                ]
                for d in history["deliveries"]
            ],
            state_column=2,
        )
        if history["deliveries"]
        else Text("  none")
    )
    return Group(*parts)


def render_history(history: dict[str, Any]) -> str:
    return as_text(history_view(history))


def as_text(view: Group, width: int = 160) -> str:
    """A view as plain text (for pipes, files and tests)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(view)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
