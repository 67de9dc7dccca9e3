"""Every command, run as a process with the mistakes a new user makes, answers with one line on
stderr and exit status 1 (runtime) or 2 (usage, configuration): never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.inference.cards import pack_checkpoint
from node.inference.model import MuraDenseNet
from node.training.synthetic import make_dataset

pytestmark = pytest.mark.slow

VALID = "MURA-v1.1/valid_image_paths.csv"

# (command line, expected exit status); run in a folder that holds `data` (a synthetic set),
# `models/random-1.toml` (a card of random weights) and its weights, `not-a-split.csv`, `bad-value.toml` (a
# configuration with a wrong type), `no-db.toml` (an unknown database dialect), `lost-card.toml`
# (a configuration naming a card that does not exist) and `a-file`.
MISTAKES: list[tuple[str, int]] = [
    ("serve --config missing.toml", 2),
    ("serve --config bad-value.toml", 2),
    ("worker", 1),
    ("worker --config lost-card.toml", 1),
    ("demo --dir a-file", 1),
    ("status", 1),
    ("status --config no-db.toml", 1),
    ("studies show 1.2.3", 1),
    ("studies show 1.2.3 --config no-db.toml", 1),
    ("retry --config no-db.toml", 1),
    ("db upgrade --config no-db.toml", 1),
    ("model info --config lost-card.toml", 1),
    ("model pack missing.pt --name n --version 1", 1),
    ("model pack not-a-split.csv --name n --version 1", 1),
    ("model pack models/random-1.safetensors --name n --version 1 --input-size 5", 2),
    ("config show --config missing.toml", 2),
    ("config show --config bad-value.toml", 2),
    ("train --data missing --out run", 2),
    ("train --data data/MURA-v1.1 --out run --epochs 0", 2),
    ("train --data data/MURA-v1.1 --out run --device nonsense", 2),
    ("train --data data/MURA-v1.1 --train-csv not-a-split.csv --out run", 2),
    ("train --data data/MURA-v1.1 --train-csv missing.csv --out run", 1),
    (
        f"evaluate --split data/{VALID} --cards models/random-1.toml --out r --choose-thresholds-on data/{VALID}",
        2,
    ),
    ("evaluate --split missing.csv --cards models/random-1.toml --out r", 1),
    ("evaluate --split not-a-split.csv --cards models/random-1.toml --out r", 2),
    (f"evaluate --split data/{VALID} --cards missing.toml --out r", 1),
    (f"evaluate --split data/{VALID} --cards models/random-1.safetensors --out r", 1),
    (f"evaluate --split data/{VALID} --cards models/random-1.toml --out a-file", 1),
    ("synth data", 2),
    ("synth new --studies 0", 2),
    ("synth new --label-noise 0.7", 2),
    ("synth a-file/x", 1),
]

# argparse's own mistakes: its usage line and one error line, status 2.
ARGPARSE_MISTAKES = [
    "frobnicate",
    "evaluate --cards models/random-1.toml --out r",
    "train --data data --out run --epochs many",
    "synth",
    "status --limit lots",
    "status --state BOGUS",
    "model",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    here = tmp_path_factory.mktemp("mistakes")
    make_dataset(here / "data", studies_per_type=2, size=32)
    pack_checkpoint(
        MuraDenseNet().state_dict(), here / "models", name="random", version="1", input_size=32
    )
    (here / "not-a-split.csv").write_text("these,are\nnot,MURA paths\n")
    (here / "bad-value.toml").write_text('[dicom]\nport = "eleven"\n')
    (here / "no-db.toml").write_text('[database]\nurl = "nosuchdialect://host/db"\n')
    (here / "lost-card.toml").write_text('[model]\ncards = ["gone.toml"]\n')
    (here / "a-file").write_text("a file, not a folder\n")
    return here


def run(folder: Path, line: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *line.split()],
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=300,
    )


@pytest.mark.parametrize(("line", "expected"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_gets_one_line_and_a_status(folder: Path, line: str, expected: int) -> None:
    result = run(folder, line)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == expected, result.stderr
    messages = [text for text in result.stderr.splitlines() if text.strip()]
    assert len(messages) == 1 and messages[0].startswith("mura-node: "), result.stderr


@pytest.mark.parametrize("line", ARGPARSE_MISTAKES)
def test_a_usage_mistake_gets_usage_and_one_error_line(folder: Path, line: str) -> None:
    result = run(folder, line)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2
    assert result.stderr.startswith("usage: mura-node")
    assert result.stderr.rstrip().splitlines()[-1].startswith("mura-node")
    assert ": error: " in result.stderr.rstrip().splitlines()[-1]


def test_every_command_is_tried() -> None:
    from node.commands import COMMANDS

    tried = {" ".join(line.split()[:2]) for line, _ in MISTAKES}
    tried |= {line.split()[0] for line, _ in MISTAKES}
    assert set(COMMANDS) <= tried
