"""The command table of `mura-node` and the JSON form of the operator's reports."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

import node.cli
from node.commands import COMMANDS, config_dict
from node.config import Config, DatabaseConfig
from node.operate.reports import DeliveryRow, InstanceRow, Rejection, ResultRow, as_json


def _command_names(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    names: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = _command_names(sub, f"{prefix}{name} ")
                names |= inner or {f"{prefix}{name}"}
    return names


def test_every_command_has_a_function_and_a_line_in_the_docstring() -> None:
    names = _command_names(node.cli._parser())
    assert names == set(COMMANDS)
    assert len(names) == 13
    doc = node.cli.__doc__ or ""
    for name in names:
        assert f"``{name.split()[0]}" in doc and name.split()[-1] in doc


def test_config_show_hides_the_password_and_writes_plain_values() -> None:
    config = Config(database=DatabaseConfig(url="postgresql://node:secret@db/mura"))
    data = config_dict(config)
    text = json.dumps(data)
    assert "secret" not in text
    assert data["database"]["effective_url"] == "postgresql://node:***@db/mura"
    assert data["dicom"]["peer_addresses"] == {} and data["model"]["cards"] == []
    assert data["destinations"] == [] and data["storage"]["data_dir"] == "mura-node-data"


def test_reports_keep_the_json_names_of_their_fields() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    assert as_json(DeliveryRow("sr", "pacs", "RETRY", 2, 0xA700, "refused", 0, at)) == {
        "object": "sr",
        "destination": "pacs",
        "state": "RETRY",
        "attempts": 2,
        "last_status": "0xA700",
        "last_error": "refused",
        "unanswered": 0,
        "updated_at": "2026-01-02T03:04:05+00:00",
    }
    assert (
        as_json(DeliveryRow("sc", "pacs", "PENDING", 0, None, None, 0, None))["last_status"] is None
    )
    assert list(
        as_json(InstanceRow("1.2", "analyse", "1.2.3", "1.2.4", "CT1", at, 1, None, None, None))
    ) == [
        "sop_instance_uid",
        "role",
        "sop_class_uid",
        "transfer_syntax_uid",
        "from",
        "received_at",
        "revision",
        "body_part_examined",
        "anatomic_region",
        "study_type",
    ]
    assert as_json(ResultRow("sr", 1, "1.2", "/x/sr.dcm"))["file"] == "/x/sr.dcm"
    assert as_json(Rejection(at, "CT1", 0xA900, "unknown")) == {
        "at": "2026-01-02T03:04:05+00:00",
        "calling_ae_title": "CT1",
        "status": "0xA900",
        "reason": "unknown",
    }
