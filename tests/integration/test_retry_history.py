"""`mura-node retry` re-queues dead letters without losing what went wrong: the rows keep their
last error until the next attempt, and the study's history says what was re-queued and why."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from node.deliver.outbox import Outbox
from node.inference.engine import InferenceEngine
from node.operate.reports import StudyDetail
from node.operate.service import Node
from node.operate.status import study_history
from node.operate.status_view import render_history
from tests.integration.test_dispatch import engine, start_delivering
from tests.support.factory import free_port

__all__ = ["engine"]  # the module's fixture: an untrained model at a small input


def test_retry_keeps_the_failure_in_the_history(
    make_node: Callable[..., Node], engine: InferenceEngine, tmp_path: Path
) -> None:
    delivering = start_delivering(make_node, engine, tmp_path)
    port = free_port()  # nothing listens there
    refused = f"cannot connect to 127.0.0.1:{port}: Connection refused"
    dispatcher = delivering.to("PACS", port)
    study_uid = delivering.study()
    try:
        for _ in range(5):  # dispatch.max_attempts
            assert dispatcher.run_once() == 2
            delivering.clock.advance(3600)
    finally:
        dispatcher.close()
    assert {(d.state, d.attempts) for d in delivering.deliveries().values()} == {("DEAD", 5)}

    assert Outbox(delivering.node.engine, delivering.clock).retry_dead() == 2
    rows = delivering.deliveries().values()
    assert {(d.state, d.attempts, d.last_error) for d in rows} == {("PENDING", 0, refused)}
    detail = f"pacs: 2 objects (sr, sc) after 5 attempts; last error: {refused}"
    assert delivering.events("re-queued") == [detail]
    history = study_history(delivering.node.engine, study_uid)
    assert isinstance(history, StudyDetail)
    assert [e.event for e in history.history][-2:] == ["dead letter", "re-queued"]
    assert detail in render_history(history)
    assert {d.last_error for d in history.deliveries} == {refused}
    assert Outbox(delivering.node.engine, delivering.clock).retry_dead() == 0
    assert len(delivering.events("re-queued")) == 1
