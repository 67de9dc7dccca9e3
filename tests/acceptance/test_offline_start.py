"""Acceptance: once set up, `scripts/serve` starts with the package index unreachable.

A copy of the checkout's scripts and pyproject.toml, with a virtual environment of its own whose
packages are this checkout's (a .pth file): `scripts/serve --help` runs `scripts/setup`, then the
node, with pip told to use no index and an index URL nothing answers."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

OFFLINE = {
    "PIP_NO_INDEX": "1",
    "PIP_INDEX_URL": "http://127.0.0.1:9/",
    "PIP_EXTRA_INDEX_URL": "",
    "PIP_FIND_LINKS": "",
    "PIP_CONFIG_FILE": os.devnull,
}


def _checkout(tmp_path: Path) -> Path:
    """A checkout with a complete .venv: scripts, pyproject.toml, and a venv that sees this
    checkout's installed packages (mura-node among them) and has a `mura-node` command."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "scripts", checkout / "scripts")
    shutil.copy(ROOT / "pyproject.toml", checkout / "pyproject.toml")
    venv = checkout / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    [site_packages] = (venv / "lib").glob("python3*/site-packages")
    # addsitedir, so that the .pth files there (the editable mura-node) count too
    purelib = sysconfig.get_paths()["purelib"]
    (site_packages / "checkout.pth").write_text(f"import site; site.addsitedir({purelib!r})\n")
    command = venv / "bin" / "mura-node"
    command.write_text(
        f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom node.cli import main\nsys.exit(main())\n"
    )
    command.chmod(0o755)
    return checkout


def _record_install(checkout: Path, extras: str) -> None:
    """What scripts/setup writes after installing: pyproject.toml's SHA-256, then the extras."""
    digest = hashlib.sha256((checkout / "pyproject.toml").read_bytes()).hexdigest()
    (checkout / ".venv" / ".installed").write_text(f"{digest} {extras}\n")


def _serve_help(checkout: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [checkout / "scripts" / "serve", "--help"],
        env={**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_serve_starts_without_the_index_once_set_up(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path)
    _record_install(checkout, "postgresql,dev")
    started = _serve_help(checkout)
    assert started.returncode == 0, started.stderr
    assert "usage: mura-node serve" in started.stdout
    assert "installed in .venv" not in started.stdout  # nothing was installed


def test_a_changed_pyproject_is_installed_again(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path)
    _record_install(checkout, "postgresql")
    with (checkout / "pyproject.toml").open("a") as pyproject:
        pyproject.write("# changed\n")
    started = _serve_help(checkout)
    # setup tried to install (and, with no index and no project sources here, could not)
    assert started.returncode != 0
    assert "usage: mura-node serve" not in started.stdout
    assert not (checkout / ".venv" / ".installed").exists()
