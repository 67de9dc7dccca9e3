"""Drawing the operator's reports (node/operate/reports.py): rich tables on a terminal, plain text in a
pipe, JSON for scripts, and the `status --watch` loop. Building them is node/operate/status.py's part.

Times are shown in UTC to the second; the state column is coloured by state on a terminal.

One width rule for every view, once or watching: on a terminal, the terminal's width (a long
cell wraps inside its column); elsewhere (a pipe, a file, a log collector) no wrapping at all,
so a reason or an error stays whole on its line for `grep` and for people.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from node.operate.reports import QueueReport, StudyDetail, StudyRow, as_json, hex_status, iso
from node.states import DeliveryState, StudyState


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _clock(value: datetime | None) -> str:
    text = iso(value)
    return "-" if text is None else text[:19].replace("T", " ")


STATE_STYLES: dict[str, str] = {
    StudyState.RECEIVING: "cyan",
    StudyState.READY: "yellow",
    StudyState.PROCESSING: "bold yellow",
    StudyState.DISPATCHING: "blue",
    StudyState.DONE: "green",
    StudyState.IGNORED: "dim",
    StudyState.FAILED: "bold red",
    DeliveryState.DEAD: "bold red",
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


def _reopened(first: datetime | None, reopened: datetime | None) -> str:
    """The re-opening time, with its date only when it differs from the first arrival's."""
    if reopened is None:
        return "-"
    text = _clock(reopened)
    return text[11:] if first is not None and _clock(first)[:10] == text[:10] else text


def _study_table(studies: tuple[StudyRow, ...]) -> Table:
    headers = [
        "STUDY",
        "TYPE",
        "IMAGES",
        "OTHER",
        "STATE",
        "FIRST ARRIVAL (UTC)",
        "REOPENED",
        "LAST ARRIVAL",
        "CHANGED",
        "REASON",
    ]
    rows = [
        [
            s.study,
            s.study_type or "-",
            str(s.images),
            str(s.other_objects),
            s.state,
            _clock(s.first_received_at),
            _reopened(s.first_received_at, s.reopened_at),
            _clock(s.last_received_at)[11:],
            _clock(s.state_changed_at)[11:],
            s.reason or "",
        ]
        for s in studies
    ]
    return _table(headers, rows, state_column=4)


def status_view(report: QueueReport, database: str) -> Group:
    """The report for people: rich tables (coloured on a terminal, plain text otherwise)."""
    parts: list[Any] = [
        Text(
            f"mura-node status at {_clock(report.generated_at)} UTC, database {database}",
            style="bold",
        ),
    ]
    if report.model_untrained:
        parts.append(
            Text(
                "MODEL UNTRAINED: random weights (model.allow_untrained without model.cards); "
                "results are meaningless, not for diagnosis",
                style="bold red",
            )
        )
    parts += [Text(""), Text("Studies by state", style="bold")]
    counts = report.studies_by_state
    parts.append(_table(["STATE", "STUDIES"], [[state, str(n)] for state, n in counts.items()], 0))
    instances = report.instances
    parts.append(
        Text(
            f"Instances: {instances.stored} images stored, {instances.ignored} other objects ignored"
        )
    )
    oldest = report.oldest_waiting
    parts.append(
        Text(
            f"Oldest waiting study: {oldest.study} ({oldest.state}), "
            f"waiting {_duration(oldest.waiting_s)} since {_clock(oldest.since)} UTC"
            if oldest
            else "Oldest waiting study: none"
        )
    )
    parts += [Text(""), Text("Recent studies (newest arrival first)", style="bold")]
    parts.append(
        _study_table(report.recent_studies) if report.recent_studies else Text("  none yet")
    )
    parts += [Text(""), Text("Failed studies", style="bold")]
    parts.append(_study_table(report.failed_studies) if report.failed_studies else Text("  none"))
    parts += [
        Text(""),
        Text(
            "Deliveries: "
            + ", ".join(f"{n} {state.lower()}" for state, n in report.deliveries.items())
        ),
    ]
    if report.dead_letters:
        parts.append(Text("Dead letters (re-queue with `mura-node retry`):", style="bold red"))
        parts.append(
            _table(
                ["STUDY", "OBJECT", "DESTINATION", "ATTEMPTS", "SINCE (UTC)", "LAST ERROR"],
                [
                    [
                        d.study,
                        d.kind,
                        d.destination,
                        str(d.attempts),
                        _clock(d.since),
                        d.last_error or "",
                    ]
                    for d in report.dead_letters
                ],
            )
        )
    if report.after_unanswered:
        parts.append(Text("After a C-STORE without response (last 24 h):", style="bold"))
        parts.append(
            _table(
                ["AT (UTC)", "STUDY", "EVENT", "DETAIL"],
                [[_clock(e.at), e.study, e.event, e.detail or ""] for e in report.after_unanswered],
            )
        )
    rejected = report.rejected_last_24h
    parts += [Text(""), Text(f"Refused C-STOREs in the last 24 h: {rejected.count}")]
    if rejected.recent:
        parts.append(
            _table(
                ["AT (UTC)", "FROM", "STATUS", "REASON"],
                [
                    [_clock(r.at), r.calling_ae_title, hex_status(r.status) or "", r.reason]
                    for r in rejected.recent
                ],
            )
        )
    return Group(*parts)


def render_status(report: QueueReport, database: str) -> str:
    """:func:`status_view` as plain text."""
    return as_text(status_view(report, database))


def history_view(history: StudyDetail) -> Group:
    """One study for people: its state, history, instances, results and deliveries."""
    parts: list[Any] = [
        Text(f"study {history.study_instance_uid}", style="bold"),
        Text(
            f"  state {history.state} (generation {history.generation}), "
            f"type {history.study_type or '-'}"
        ),
        Text(f"  reason {history.reason or '-'}"),
        Text(""),
        Text("History", style="bold"),
        _table(
            ["AT (UTC)", "EVENT", "DETAIL"],
            [[_clock(e.at), e.event, e.detail or ""] for e in history.history],
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
                    _clock(i.received_at),
                    i.role,
                    i.calling_ae_title,
                    str(i.revision),
                    i.body_part_examined or "-",
                    i.anatomic_region or "-",
                    i.study_type or "-",
                    i.sop_instance_uid,
                ]
                for i in history.instances
            ],
        ),
        Text(""),
        Text("Results", style="bold"),
    ]
    parts.append(
        _table(
            ["KIND", "GEN", "SOP INSTANCE UID", "FILE"],
            [[r.kind, str(r.generation), r.sop_instance_uid, r.file_path] for r in history.results],
        )
        if history.results
        else Text("  none")
    )
    parts += [Text(""), Text("Deliveries", style="bold")]
    parts.append(
        _table(
            ["OBJECT", "DESTINATION", "STATE", "ATTEMPTS", "UPDATED (UTC)", "LAST ERROR"],
            [
                [
                    d.kind,
                    d.destination,
                    d.state,
                    str(d.attempts),
                    _clock(d.updated_at),
                    d.last_error or "",
                ]
                for d in history.deliveries
            ],
            state_column=2,
        )
        if history.deliveries
        else Text("  none")
    )
    return Group(*parts)


def render_history(history: StudyDetail) -> str:
    """:func:`history_view` as plain text."""
    return as_text(history_view(history))


# Off a terminal nothing wraps: a width no line of a report reaches (rich needs one).
UNWRAPPED = 100_000


def as_text(view: Group, width: int = UNWRAPPED) -> str:
    """A view as plain text (for pipes, files and tests): no colour, trailing spaces removed,
    lines wrapped at ``width`` characters (by default not at all)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(view)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def print_status(
    build: Callable[[], QueueReport], database: str, *, json_output: bool, watch: float | None
) -> None:
    """Print the report from ``build()`` once, or every ``watch`` seconds until Ctrl-C.

    Once: indented JSON with ``json_output``, tables on a terminal, plain text in a pipe.
    Watching: one JSON object a line with ``json_output``, a live table on a terminal, else
    each report in turn as plain text, a blank line between them. Text follows the module's
    width rule either way.
    """
    if watch is None:
        if json_output:
            print(json.dumps(as_json(build()), indent=2))
        elif sys.stdout.isatty():
            Console().print(status_view(build(), database))
        else:
            sys.stdout.write(render_status(build(), database))
        return
    with _interrupted() as stop:
        if json_output or not sys.stdout.isatty():
            separator = ""
            while not stop.is_set():
                report = build()
                if json_output:
                    sys.stdout.write(json.dumps(as_json(report)) + "\n")
                else:
                    sys.stdout.write(separator + render_status(report, database))
                    separator = "\n"
                sys.stdout.flush()
                stop.wait(watch)
            return
        with Live(console=Console(), auto_refresh=False) as live:
            while not stop.is_set():
                live.update(status_view(build(), database), refresh=True)
                stop.wait(watch)


@contextlib.contextmanager
def _interrupted() -> Iterator[threading.Event]:
    """An event set by Ctrl-C (SIGINT) or SIGTERM while the block runs.

    A handler that only sets a flag ends a watch loop whatever the interpreter was doing when
    the signal came; a KeyboardInterrupt raised inside a finaliser or a weakref callback (the
    database pool has both) would be printed as ignored and the loop would go on."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda _signum, _frame: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def print_history(history: StudyDetail, *, json_output: bool) -> None:
    """Print one study: indented JSON, tables on a terminal, plain text in a pipe."""
    if json_output:
        print(json.dumps(as_json(history), indent=2))
    elif sys.stdout.isatty():
        Console().print(history_view(history))
    else:
        sys.stdout.write(render_history(history))
