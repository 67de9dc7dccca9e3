"""Durable file store for received instances.

Layout under the data directory::

    tmp/                      partial copies (<random>.part); emptied at start
    instances/ab/<random>.dcm one file per received version of an instance
    results/ab/<random>.dcm   the node's SRs and heatmap SCs

File names are random UUIDs chosen by the node, never a string a peer sent, so a hostile
SOPInstanceUID cannot choose where a file lands.

pynetdicom streams each received data set to a temporary Part 10 file (its File Meta, then the
data set bytes exactly as received, not decoded). ``serve`` points the temporary directory at
``tmp/`` so that file can be *adopted* without copying: hard-link it under its final name, then
fsync the file and its directory, the two at once (on a journalling file system both wait for the
same journal commit, so the pair costs about one fsync). When the temporary file is on another file system the node copies it
instead (same guarantees, one more write). A row in the database is committed only after this,
so every file a row names is complete; a file that no row names (a crash in between) is garbage.

The 256 shard directories of ``instances/`` and ``results/`` are made at start (``prepare``), so
that storing a file never has to create and fsync a directory on the way.
"""

from __future__ import annotations

import errno
import filecmp
import os
import shutil
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pydicom.dataset import Dataset

from node.errors import OutOfResources

_CROSS_DEVICE = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP}
SHARDS = tuple(f"{index:02x}" for index in range(256))  # first two hex digits of a file's name


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir.resolve()
        self.tmp = self.root / "tmp"
        self.instances = self.root / "instances"
        self.results = self.root / "results"
        # fsyncs of directories, beside those of their files (threads start on first use)
        self._directory_syncs = ThreadPoolExecutor(thread_name_prefix="fsync-directory")

    def prepare(self) -> None:
        """Create the layout (owner-only permissions, every shard directory, each made durable)
        and remove temporary files of a crashed run."""
        for directory in (self.root, self.tmp, self.instances, self.results):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for parent in (self.instances, self.results):
            missing = [parent / shard for shard in SHARDS if not (parent / shard).is_dir()]
            for shard_dir in missing:
                shard_dir.mkdir(mode=0o700, exist_ok=True)
            if missing:
                fsync_directory(parent)
        for leftover in self.tmp.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)

    @staticmethod
    def new_name() -> str:
        """A fresh relative path for a file to adopt (the node's own random name)."""
        name = uuid.uuid4().hex
        return f"instances/{name[:2]}/{name}.dcm"

    def adopt(self, source: Path, relative: str) -> str:
        """Make a complete received file durable under ``relative``; return ``relative``.

        Durable means: the file's bytes, its inode and its directory entry have each been
        fsynced. Raises OutOfResources (nothing left under ``relative``) on any OSError."""
        final = self.path_of(relative)
        try:
            shard = final.parent
            if not shard.is_dir():  # made by prepare(); only a store changed behind the node's back
                shard.mkdir(mode=0o700, exist_ok=True)
                fsync_directory(shard.parent)
            try:
                # Link first, then fsync the file and the directory at once: both are required
                # (POSIX makes a new directory entry durable only by the directory's fsync), and
                # on a journalling file system both wait for the same journal commit. Until the
                # row commits, a crash leaves at worst an unreferenced file.
                os.link(source, final)
                directory = self._sync_directory_in_parallel(shard)
                try:
                    fsync_file(final)
                finally:
                    directory.result()
            except OSError as exc:
                if exc.errno not in _CROSS_DEVICE:
                    raise
                self._copy(source, final)
                fsync_directory(shard)
        except OSError as exc:
            final.unlink(missing_ok=True)
            raise OutOfResources(f"cannot store file: {exc.strerror or exc}") from exc
        return relative

    def _sync_directory_in_parallel(self, directory: Path) -> Future[None]:
        return self._directory_syncs.submit(fsync_directory, directory)

    def _copy(self, source: Path, final: Path) -> None:
        partial = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)

    def write_result(self, dataset: Dataset) -> str:
        """Write a result object durably as results/<xx>/<random>.dcm; return the relative path."""
        name = uuid.uuid4().hex
        relative = f"results/{name[:2]}/{name}.dcm"
        final = self.path_of(relative)
        partial = self.tmp / f"{name}.part"
        try:
            shard = final.parent
            if not shard.is_dir():
                shard.mkdir(mode=0o700, exist_ok=True)
                fsync_directory(self.results)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                dataset.save_as(out, enforce_file_format=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, final)
            fsync_directory(shard)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise OutOfResources(f"cannot store result: {exc.strerror or exc}") from exc
        return relative

    def free_bytes(self) -> int:
        """Space left to an unprivileged writer on the data directory's file system."""
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def same_content(self, relative: str | None, other: Path) -> bool:
        """Whether a stored file holds exactly the bytes of ``other``."""
        if relative is None:
            return False
        try:
            return filecmp.cmp(self.path_of(relative), other, shallow=False)
        except OSError:
            return False

    def remove(self, relative: str) -> None:
        """Delete a stored file (after the database no longer names it)."""
        self.path_of(relative).unlink(missing_ok=True)

    def path_of(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("path outside the data directory")
        return path
