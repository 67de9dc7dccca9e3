"""Logging set-up, shared by `mura-node` and its worker and dispatcher processes.

Human-readable lines by default, JSON lines (one object per record) with ``service.log_format =
"json"``; a level per logger with ``[service.log_levels]`` (e.g. ``"node.receive.scp" = "DEBUG"``). Logs go to
stderr: under systemd the journal keeps and rotates them. Nothing patient-identifying is logged at
INFO or above (studies appear as shortened UIDs, peers as AE titles and addresses).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from node.config import ServiceConfig

NOISY = ("pynetdicom", "apscheduler", "alembic", "highdicom")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(service: ServiceConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if service.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(service.log_level.upper())
    if service.log_level.upper() != "DEBUG":
        for name in NOISY:  # pynetdicom logs every PDU at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
    for name, level in service.log_levels.items():
        logging.getLogger(name).setLevel(level.upper())
