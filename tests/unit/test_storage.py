from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from node import storage
from node.errors import OutOfResources
from node.storage import FileStore


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    store = FileStore(tmp_path / "data")
    store.prepare()
    return store


def received(tmp_path: Path, content: bytes = b"DICM-ish content") -> Path:
    path = tmp_path / "received.dcm"
    path.write_bytes(content)
    return path


def test_adopt_links_under_a_name_of_the_nodes_choosing(store: FileStore, tmp_path: Path) -> None:
    source = received(tmp_path)
    relative = store.new_name()
    assert store.adopt(source, relative) == relative
    stored = store.path_of(relative)
    assert stored.read_bytes() == source.read_bytes()
    assert stored.parent.parent == store.instances
    assert os.stat(stored).st_ino == os.stat(source).st_ino  # no copy on one file system
    assert store.instances.stat().st_mode & 0o777 == 0o700


def test_adopt_copies_across_file_systems(
    store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(_src: object, _dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    source = received(tmp_path, b"x" * 3_000_000)
    relative = store.adopt(source, store.new_name())
    stored = store.path_of(relative)
    assert stored.read_bytes() == source.read_bytes()
    assert os.stat(stored).st_ino != os.stat(source).st_ino
    assert list(store.tmp.iterdir()) == []


def test_adopt_failure_is_out_of_resources_and_leaves_nothing(
    store: FileStore, tmp_path: Path
) -> None:
    source = received(tmp_path)
    with pytest.raises(OutOfResources, match="cannot store file"):
        store.adopt(tmp_path / "vanished.dcm", store.new_name())
    assert list(store.instances.rglob("*.dcm")) == []
    assert source.exists()


def test_same_content(store: FileStore, tmp_path: Path) -> None:
    relative = store.adopt(received(tmp_path, b"abc"), store.new_name())
    other = tmp_path / "other.dcm"
    other.write_bytes(b"abc")
    assert store.same_content(relative, other)
    other.write_bytes(b"abd")
    assert not store.same_content(relative, other)
    assert not store.same_content(None, other)


def test_paths_stay_inside_the_data_directory(store: FileStore) -> None:
    with pytest.raises(ValueError, match="outside the data directory"):
        store.path_of("../../etc/passwd")
    with pytest.raises(ValueError, match="outside the data directory"):
        store.path_of("/etc/passwd")


def test_prepare_removes_leftover_temporary_files(store: FileStore) -> None:
    (store.tmp / "tmpabc.dcm").write_bytes(b"partial")
    (store.tmp / "1234.part").write_bytes(b"partial")
    store.prepare()
    assert list(store.tmp.iterdir()) == []


def test_prepare_makes_every_shard_directory(store: FileStore) -> None:
    for parent in (store.instances, store.results):
        shards = sorted(p.name for p in parent.iterdir())
        assert shards == [f"{i:02x}" for i in range(256)]
        assert all((parent / s).stat().st_mode & 0o777 == 0o700 for s in shards)
    store.prepare()  # again, on an existing layout: nothing to add
    assert len(list(store.instances.iterdir())) == 256


def test_adopt_returns_after_the_file_and_its_directory_are_fsynced(
    store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    for name in ("fsync_file", "fsync_directory"):
        real = getattr(storage, name)
        monkeypatch.setattr(
            storage, name, lambda path, real=real: (real(path), synced.append(path))
        )
    relative = store.adopt(received(tmp_path), store.new_name())
    stored = store.path_of(relative)
    assert sorted(synced) == sorted([stored, stored.parent])


def test_adopt_fails_when_the_directory_cannot_be_fsynced(
    store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(_path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(storage, "fsync_directory", failing)
    with pytest.raises(OutOfResources, match="Input/output error"):
        store.adopt(received(tmp_path), store.new_name())
    assert list(store.instances.rglob("*.dcm")) == []


def test_adopt_makes_a_missing_shard_directory(store: FileStore, tmp_path: Path) -> None:
    relative = store.new_name()
    store.path_of(relative).parent.rmdir()  # a store changed behind the node's back
    store.adopt(received(tmp_path), relative)
    assert store.path_of(relative).is_file()
