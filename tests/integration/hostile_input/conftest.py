"""The nodes the hostile cases are sent to, and the engine that processes what they store."""

from __future__ import annotations

import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from pydicom.uid import DeflatedExplicitVRLittleEndian

from node.inference.engine import InferenceEngine
from node.inference.model import MuraDenseNet
from node.operate.service import Node
from tests.support.hostile import PIXEL_TAG, encode, of, part10, radiograph
from tests.support.hostile_node import Running, started
from tests.support.nodes import FakeClock, node_config


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    """An untrained engine at 64 x 64 input: what is tested here is that a study gets through,
    not what the model says, and this is many times faster than 320 x 320 on the CPU."""
    torch.manual_seed(0)
    return InferenceEngine(
        [MuraDenseNet()], [], device=torch.device("cpu"), untrained=True, input_size=64
    )


@pytest.fixture
def running(
    make_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Running:
    """A node of its own for one test."""
    clock = FakeClock()
    node = make_node(clock=clock)
    # As `serve` does: pynetdicom's temporary files go into the data directory's tmp/.
    monkeypatch.setattr(tempfile, "tempdir", str(node.store.tmp))
    return started(node, clock, tmp_path)


@pytest.fixture(scope="module")
def battery_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One node for the whole battery: it has to keep serving through every case."""
    root = tmp_path_factory.mktemp("battery")
    clock = FakeClock()
    node = Node(node_config(root), clock=clock)
    node.start(children=False)
    try:
        yield started(node, clock, root)
    finally:
        node.stop()


@pytest.fixture
def battery(battery_node: Running, monkeypatch: pytest.MonkeyPatch) -> Running:
    monkeypatch.setattr(tempfile, "tempdir", str(battery_node.node.store.tmp))
    return battery_node


@pytest.fixture(scope="module")
def deflate_bomb() -> bytes:
    """A deflated 64 x 64 radiograph whose pixel data inflates to 400 MB: a 400 KB data set."""
    ds = radiograph()
    pixels_at = encode(ds).index(PIXEL_TAG)
    header = encode(ds)[:pixels_at] + PIXEL_TAG + b"OW\x00\x00" + struct.pack("<L", 400 << 20)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [deflater.compress(header)]
    zeros = bytes(1 << 20)
    chunks += [deflater.compress(zeros) for _ in range(400)]
    chunks.append(deflater.flush())
    return part10(of(ds, b"".join(chunks), syntax=DeflatedExplicitVRLittleEndian))
