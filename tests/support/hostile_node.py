"""The node under attack, the hostile sender, and what is checked after every case: files
only where the node puts them, the node still serving, peak memory bounded."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db import IngestRejection, Instance, Study
from node.inference.engine import InferenceEngine
from node.operate.service import Node
from node.pynetdicom_patches import files_sent_as_written
from node.work.worker import build_worker
from tests.support.factory import make_radiograph, storescu, write
from tests.support.hostile import NO_STATUS, Case, part10
from tests.support.nodes import FakeClock

MEMORY_BOUND = 200 * 1024 * 1024
FAILED_PREFIX = "input fault: image 1 of 1 cannot be used: "
NODE_FILE = re.compile(r"^(instances|results)/([0-9a-f]{2})/\2[0-9a-f]{30}\.dcm$")
DATABASE_FILE = re.compile(r"^mura-node\.db(-wal|-shm|-journal)?$")


@dataclass
class Running:
    """A node under attack, its clock, and what was on disk before the first case."""

    node: Node
    clock: FakeClock
    root: Path
    inputs: Path
    before: set[Path]
    passwd: int
    goods: int = 0


def started(node: Node, clock: FakeClock, root: Path) -> Running:
    inputs = root / "inputs"
    inputs.mkdir()
    before = {p for p in root.rglob("*") if p.is_file()}
    return Running(node, clock, root, inputs, before, Path("/etc/passwd").stat().st_mtime_ns)


def assert_files_in_place(state: Running) -> None:
    """Everything the node wrote is under the data directory, named by the node; its tmp/ is
    empty again; nothing a path-like UID spells exists."""
    data = state.node.store.root
    assert sorted(state.node.store.tmp.iterdir()) == [], "temporary files left behind"
    for path in state.root.rglob("*"):
        if not path.is_file() or path in state.before or path.is_relative_to(state.inputs):
            continue
        assert path.is_relative_to(data), f"{path} was written outside the data directory"
        relative = path.relative_to(data).as_posix()
        assert NODE_FILE.match(relative) or DATABASE_FILE.match(relative), relative
    assert Path("/etc/passwd").stat().st_mtime_ns == state.passwd
    assert not Path("/tmp/mura-hostile").exists()
    assert not any("passwd" in p.name or "hostile" in p.name for p in data.rglob("*"))


def send(port: int, path: Path, sop_class: str, syntax: str) -> tuple[int, str]:
    """One C-STORE of a file's bytes as they are, on a new association."""
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(sop_class, syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="MURA_NODE")
    assert assoc.is_established
    try:
        with files_sent_as_written():
            status = assoc.send_c_store(path)
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in status:
        return NO_STATUS, ""
    return int(status.Status), str(status.get("ErrorComment", ""))


def assert_still_serving(state: Running) -> None:
    """A good client, on a new association, stores an image (a chest: it is never processed)."""
    state.goods += 1
    ds = make_radiograph(rows=16, columns=16, body_part="CHEST", seed=state.goods)
    path = write(ds, state.inputs / f"good-{state.goods}.dcm")
    result = storescu(state.node.scp.port, [path], calling="GOODPACS")
    assert result.returncode == 0, result.stderr
    assert instance(state.node, str(ds.SOPInstanceUID)) is not None


def instance(node: Node, sop_instance_uid: str) -> Instance | None:
    with Session(node.engine) as session:
        return session.scalars(
            select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
        ).one_or_none()


def study(node: Node, study_id: int) -> Study:
    with Session(node.engine) as session:
        return session.get_one(Study, study_id)


def rejections(node: Node) -> list[tuple[int, str]]:
    with Session(node.engine) as session:
        return [(r.status, r.reason) for r in session.scalars(select(IngestRejection))]


def process(state: Running, engine: InferenceEngine) -> None:
    """Complete every study, then let a worker process what became READY."""
    state.clock.advance(3600)
    state.node.scheduler.tick()
    worker = build_worker(state.node.config, engine, state.clock)
    try:
        while worker.run_once():
            pass
        worker.drain()
    finally:
        worker.close()


class PeakMemory:
    """Growth of this process's peak resident set (VmHWM) over a block.

    Writing 5 to /proc/self/clear_refs resets the peak to the current size; where the kernel
    does not allow that, growth is counted from the peak so far (which can only undercount)."""

    def __enter__(self) -> PeakMemory:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        self.start = _status_kib("VmHWM")
        return self

    def __exit__(self, *_: object) -> None:
        self.growth = (_status_kib("VmHWM") - self.start) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@contextlib.contextmanager
def expected_thread_deaths(expected: bool = True) -> Iterator[None]:
    """Where a case makes a pynetdicom thread die on purpose (the node's reactor thread on an
    undecodable request, the sender of an aborted transfer), that is not a failure of the test;
    anywhere else a dying thread is reported as usual."""
    if not expected:
        yield
        return
    previous = threading.excepthook
    threading.excepthook = lambda args: None
    try:
        yield
    finally:
        threading.excepthook = previous


def sizes(directory: Path) -> list[int]:
    found = []
    for path in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            found.append(path.stat().st_size)
    return found


def check_case(case: Case, battery: Running, engine: InferenceEngine) -> None:
    """Send one hostile case to the running node and check what the case expects: the status
    and its comment, the rejection recorded, what was stored and what processing made of it,
    the memory bound, no stray file, and a node that still serves with its files in place."""
    running, node = battery, battery.node
    hostile = case.build()
    path = running.inputs / f"{case.name}.dcm"
    path.write_bytes(part10(hostile))
    files_before = set(node.store.instances.rglob("*.dcm"))
    with PeakMemory() as memory, expected_thread_deaths(case.status == NO_STATUS):
        status, comment = send(node.scp.port, path, hostile.sop_class, hostile.syntax)
        assert status == case.status, comment
        if case.status not in (0x0000, NO_STATUS):
            assert case.says in comment
            assert any(s == status and r.startswith(comment) for s, r in rejections(node))
        stored = instance(node, hostile.sop_instance) if hostile.sop_instance else None
        if status != 0x0000:
            assert stored is None
        else:
            assert stored is not None
            if case.outcome is None:  # an object of an ignored class: recorded, not kept
                assert (stored.role, stored.file_path) == ("ignore", None)
            else:
                process(running, engine)
                result = study(node, stored.study_id)
                assert result.state == case.outcome, result.reason
                if case.outcome == "FAILED":
                    assert result.reason.startswith(FAILED_PREFIX), result.reason
                    assert case.says in result.reason, result.reason
    if case.outcome != "DONE":  # running the model itself may take more than the bound
        assert memory.growth < MEMORY_BOUND, f"peak memory grew by {memory.growth >> 20} MiB"
    assert set(node.store.instances.rglob("*.dcm")) - files_before == (
        {node.store.path_of(str(stored.file_path))}
        if status == 0x0000 and stored is not None and stored.file_path
        else set()
    )
    if status == NO_STATUS:
        assert len(set(node.store.instances.rglob("*.dcm")) - files_before) == 0
        # pynetdicom's leftover (see the case): empty, in the data directory's tmp/, and gone
        # after a restart (FileStore.prepare empties tmp/). Removing it sooner needs node/receive/scp.py
        # to delete files in tmp/ that no live association is writing (a periodic sweep).
        leftovers = list(node.store.tmp.iterdir())
        assert all(p.stat().st_size == 0 for p in leftovers), leftovers
        node.store.prepare()
    assert_still_serving(running)
    assert_files_in_place(running)
