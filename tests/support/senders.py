"""Sending files to a node with pynetdicom exactly as they are."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE

from node.operate.service import Node
from node.pynetdicom_patches import files_sent_as_written


def pynetdicom_send(
    node: Node, path: Path, sop_class: str, transfer_syntax: str = "1.2.840.10008.1.2.1"
) -> tuple[int, str]:
    """Send a file as it is (pynetdicom takes the request's UIDs from its File Meta)."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(sop_class, transfer_syntax)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="MURA_NODE")
    assert assoc.is_established
    try:
        with files_sent_as_written():  # the file's bytes, UIDs from its File Meta
            status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status), str(status.get("ErrorComment", ""))


def write_as_is(ds: Dataset, path: Path) -> Path:
    """Write without pydicom making the File Meta agree with the data set."""
    ds.preamble = b"\x00" * 128
    ds.save_as(path, enforce_file_format=False)
    return path
