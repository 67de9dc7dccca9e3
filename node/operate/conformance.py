"""The tables of docs/conformance.md that come from dicom_profiles/, generated so they cannot drift.

    .venv/bin/python -m node.operate.conformance docs/conformance.md    # rewrite the generated sections

A test checks that the document holds exactly what this module generates.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydicom.uid import UID

from node.deliver.scu import RESULT_CLASSES, RESULT_TRANSFER_SYNTAXES, STUDY_ROOT_FIND
from node.profiles import Role, StorageProfile, load_storage_profile


def scp_classes(profile: StorageProfile) -> str:
    rows = ["| SOP class | UID | what the node does |", "| --- | --- | --- |"]
    rows.append("| Verification | 1.2.840.10008.1.1 | answers C-ECHO |")
    analysed = [uid for uid, role in profile.sop_classes.items() if role is Role.ANALYSE]
    for uid in analysed:
        rows.append(f"| {profile.names[uid]} | {uid} | stored and analysed |")
    ignored = sorted(uid for uid, role in profile.sop_classes.items() if role is Role.IGNORE)
    rows.append(
        f"| every other Storage SOP class known to pynetdicom ({len(ignored)} classes) | - | "
        "accepted with Success, recorded, not kept or analysed |"
    )
    return "\n".join(rows)


def scp_transfer_syntaxes(profile: StorageProfile) -> str:
    rows = ["| transfer syntax | UID |", "| --- | --- |"]
    rows += [f"| {UID(uid).name} | {uid} |" for uid in profile.transfer_syntaxes]
    return "\n".join(rows)


def scu_classes() -> str:
    rows = ["| SOP class | UID | transfer syntaxes | proposed |", "| --- | --- | --- | --- |"]
    syntaxes = ", ".join(f"{UID(ts).name} ({ts})" for ts in RESULT_TRANSFER_SYNTAXES)
    rows += [f"| {UID(uid).name} | {uid} | {syntaxes} | always |" for uid in RESULT_CLASSES]
    rows.append(
        f"| {UID(STUDY_ROOT_FIND).name} | {STUDY_ROOT_FIND} | {syntaxes} | "
        "when a delivery's earlier attempt got no response |"
    )
    return "\n".join(rows)


def sections(profile: StorageProfile | None = None) -> dict[str, str]:
    profile = profile or load_storage_profile()
    return {
        "scp-sop-classes": scp_classes(profile),
        "scp-transfer-syntaxes": scp_transfer_syntaxes(profile),
        "scu-sop-classes": scu_classes(),
    }


def render(document: str, generated: dict[str, str]) -> str:
    """The document with every ``<!-- generated: NAME -->`` ... ``<!-- end NAME -->`` block replaced."""
    for name, table in generated.items():
        pattern = re.compile(
            rf"(<!-- generated: {name} -->\n)(?:.*?\n)?(<!-- end {name} -->)", re.S
        )
        if not pattern.search(document):
            raise ValueError(f"the document has no generated block {name!r}")
        match = pattern.search(document)
        assert match is not None
        document = (
            document[: match.start()]
            + match.group(1)
            + table
            + "\n"
            + match.group(2)
            + document[match.end() :]
        )
    return document


if __name__ == "__main__":
    path = Path(sys.argv[1])
    path.write_text(render(path.read_text(), sections()))
