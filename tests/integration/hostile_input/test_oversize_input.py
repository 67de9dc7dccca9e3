"""Oversize input at ingest: a data set over dicom.max_dataset_bytes, and a deflated data set
that inflates a thousandfold."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db import Study
from node.inference.engine import InferenceEngine
from node.operate.service import Node
from tests.support.factory import CR, storescu, write
from tests.support.hostile import of, part10, radiograph
from tests.support.hostile_node import (
    FAILED_PREFIX,
    MEMORY_BOUND,
    PeakMemory,
    Running,
    assert_files_in_place,
    assert_still_serving,
    instance,
    process,
    send,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")


def test_data_set_over_the_configured_maximum_gets_a700(
    make_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node(dicom={"max_dataset_bytes": 20_000})
    monkeypatch.setattr(tempfile, "tempdir", str(node.store.tmp))
    large = radiograph()
    large.Rows = large.Columns = 128
    large.PixelData = bytes(128 * 128 * 2)  # 32 KiB
    path = tmp_path / "large.dcm"
    path.write_bytes(part10(of(large)))
    assert send(node.scp.port, path, CR, ExplicitVRLittleEndian) == (
        0xA700,
        "data set over the maximum size (20000 bytes)",
    )
    assert instance(node, str(large.SOPInstanceUID)) is None
    assert list(node.store.tmp.iterdir()) == []
    good = write(radiograph(), tmp_path / "good.dcm")
    assert storescu(node.scp.port, [good]).returncode == 0


# --- memory and disk bounds that need node/receive/scp.py to change ----------------------------------


def test_deflate_bomb_at_ingest_keeps_memory_bounded(
    running: Running, engine: InferenceEngine, deflate_bomb: bytes
) -> None:
    # pynetdicom/pydicom alone: node/receive/scp.py read_header calls dcmread(stop_before_pixels=True), and pydicom
    # inflates a deflated data set whole before it reads a single element (zlib.decompress of the
    # rest of the file): this 400 KB data set costs the SCP 400 MB, a 1 GiB one (the default
    # dicom.max_dataset_bytes) 1 TB. node/receive/scp.py therefore: for the Deflated transfer syntax, inflate only a bounded
    # prefix of the data set (zlib.decompressobj().decompress(data, max_length=...)), enough
    # for the header, and parse that with pydicom.filereader.read_dataset(..., stop_when= at pixel
    # data), as node/inference/imaging.py read_dicom does for the worker.
    path = running.inputs / "bomb.dcm"
    path.write_bytes(deflate_bomb)
    with PeakMemory() as memory:
        status, comment = send(running.node.scp.port, path, CR, DeflatedExplicitVRLittleEndian)
        assert status in (0x0000, 0xA700, 0xC000), comment
        if status == 0x0000:  # stored: the worker refuses it without inflating it whole
            process(running, engine)
            with Session(running.node.engine) as session:
                [result] = session.scalars(select(Study).where(Study.state != "IGNORED"))
            assert result.state == "FAILED"
            assert result.reason.startswith(FAILED_PREFIX + "deflated data set inflates")
    assert memory.growth < MEMORY_BOUND, f"peak memory grew by {memory.growth >> 20} MiB"
    assert_still_serving(running)
    assert_files_in_place(running)
