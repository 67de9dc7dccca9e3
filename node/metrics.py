"""Prometheus metrics and a health endpoint (off by default, loopback unless configured).

`serve` and its worker and dispatcher processes share counters and histograms through
prometheus-client's multiprocess mode (files under ``<data_dir>/metrics``); the study and delivery
gauges are read from the database at each scrape. Endpoints, on ``metrics.host``:``metrics.port``:

- ``/metrics``: instances received by outcome, studies by state, deliveries by state, queue wait
  (READY to claimed), inference time per image, dispatch outcomes, and whether the configured
  model is untrained (``mura_node_model_untrained``, 1 or 0);
- ``/healthz``: 200 "ok" while the SCP listens and the database answers, else 503 with the reason
  (for a load balancer or a systemd watchdog script).

When metrics are off, every recording function below does nothing.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
ENV = "PROMETHEUS_MULTIPROC_DIR"
_metrics: dict[str, Any] = {}


class DeliveryOutcome(enum.StrEnum):
    """The ``outcome`` label of ``mura_node_deliveries``: what one delivery attempt came to."""

    STORED = "stored"  # the destination holds the object (a success or warning status, or C-FIND)
    FAILED = "failed"  # a failed attempt, to be retried
    DEAD = "dead"  # a failed attempt that dead-lettered the delivery


def prepare_directory(directory: Path) -> None:
    """Start a fresh multiprocess directory; must run before any process imports the client."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[ENV] = str(directory)


def _enabled() -> bool:
    if not _metrics and os.environ.get(ENV):
        from prometheus_client import Counter, Histogram

        _metrics["instances"] = Counter(
            "mura_node_instances_received", "C-STORE requests by outcome", ["outcome"]
        )
        _metrics["queue_wait"] = Histogram(
            "mura_node_queue_wait_seconds",
            "From READY to claimed by a worker",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
        )
        _metrics["inference"] = Histogram(
            "mura_node_inference_seconds_per_image",
            "Engine time per image",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        _metrics["deliveries"] = Counter(
            "mura_node_deliveries",
            "Delivery attempts by destination and outcome",
            ["destination", "outcome"],
        )
    return bool(_metrics)


def instance_received(outcome: str) -> None:
    """Count a received instance by its ``outcome`` label: an `IngestOutcome` value, or
    "refused 0xNNNN" with the status the node answered."""
    if _enabled():
        _metrics["instances"].labels(outcome).inc()


def queue_wait(seconds: float) -> None:
    if _enabled():
        _metrics["queue_wait"].observe(seconds)


def inference_per_image(seconds: float) -> None:
    if _enabled():
        _metrics["inference"].observe(seconds)


def delivery(destination: str, outcome: DeliveryOutcome) -> None:
    """Count one delivery attempt to ``destination`` (its configured name) by outcome."""
    if _enabled():
        _metrics["deliveries"].labels(destination, outcome).inc()


def state_counts(session: Session) -> tuple[dict[str, int], dict[str, int]]:
    """Studies by state and deliveries by state, every state present with 0 when none (the
    ``mura_node_studies`` and ``mura_node_delivery_queue`` gauges, and `mura-node status`)."""
    from sqlalchemy import func, select

    from node.db import Dispatch, Study
    from node.states import DeliveryState, StudyState

    studies = {state.value: 0 for state in StudyState}
    for state, count in session.execute(select(Study.state, func.count()).group_by(Study.state)):
        studies[state] = int(count)
    deliveries = {state.value: 0 for state in DeliveryState}
    for state, count in session.execute(
        select(Dispatch.state, func.count()).group_by(Dispatch.state)
    ):
        deliveries[state] = int(count)
    return studies, deliveries


class _DatabaseCollector:
    def __init__(self, read: Callable[[], dict[str, dict[str, int]]], untrained: bool) -> None:
        self.read = read
        self.untrained = untrained

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(
            "mura_node_model_untrained",
            "1 when the configured model has random weights (results are meaningless), else 0",
            value=1 if self.untrained else 0,
        )
        counts = self.read()
        for name, help_text, key in (
            ("mura_node_studies", "Studies by state", "studies"),
            ("mura_node_delivery_queue", "Deliveries by state", "deliveries"),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["state"])
            for state, count in counts[key].items():
                family.add_metric([state], count)
            yield family


def serve_endpoints(
    host: str,
    port: int,
    read_counts: Callable[[], dict[str, dict[str, int]]],
    healthy: Callable[[], str | None],
    model_untrained: bool = False,
) -> ThreadingHTTPServer:
    """Start the HTTP endpoints on a background thread; returns the server (``shutdown()`` stops
    it). ``model_untrained``: the value of the ``mura_node_model_untrained`` gauge (1 or 0)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(_DatabaseCollector(read_counts, model_untrained))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, status, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            elif self.path == "/healthz":
                problem = healthy()
                body = (problem or "ok").encode() + b"\n"
                status, kind = (503 if problem else 200), "text/plain; charset=utf-8"
            else:
                body, status, kind = b"not found\n", 404, "text/plain; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
