"""`mura-node demo` as a newcomer runs it: one command, nothing configured."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.support.factory import dciodvfy_errors

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    command = Path(sys.executable).parent / "mura-node"
    # as after scripts/setup: the environment's bin directory is not on PATH
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != command.parent]
    result = subprocess.run(
        [sys.executable, "-m", "node", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PATH": os.pathsep.join(path)},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "UNTRAINED" in out and "mean nothing" in out
    assert "study type      : Hand structure" in out
    # the command it names for the queue is one that runs from a shell here
    assert f"{command} status" in out and f'export PATH="{command.parent}:$PATH"' in out
    assert out.count("probability") == 4
    received = sorted((tmp_path / "demo" / "pacs").glob("*.dcm"))
    assert [p.name.split("-")[0] for p in received].count("heatmap") == 3
    assert [p.name.split("-")[0] for p in received].count("summary") == 1
    assert len(list((tmp_path / "demo" / "previews").glob("heatmap-*.png"))) == 3
    assert len(list((tmp_path / "demo" / "previews").glob("summary-*.png"))) == 1
    for path in received:
        assert dciodvfy_errors(path) == []
    sr = next(p for p in received if p.name.startswith("sr"))
    assert dcmread(sr).Modality == "SR"
    dump = subprocess.run(["dsrdump", str(sr)], capture_output=True, text=True).stdout
    assert '"MURA DenseNet-169 (UNTRAINED)"' in dump and "UNTRAINED MODEL" in dump
