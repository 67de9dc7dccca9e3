"""Durable file store for received instances.

Layout under the data directory::

    tmp/                      staging files (<random>.part); emptied at start
    instances/ab/<sha256>.dcm one file per received version of an instance

Names are the SHA-256 of the received data set (a name we compute, never a string a peer sent),
so a hostile SOPInstanceUID cannot choose where a file lands. Staging and final files are on the
same file system; a file is made durable by fsync, atomic rename and fsync of the directory, so
after a crash a name in ``instances/`` always holds the complete file.

The file written is a DICOM Part 10 file: preamble, File Meta Information written by the node
(with the peer's AE title as SourceApplicationEntityTitle), then the data set bytes exactly as
received, without decoding.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from node import __version__
from node.errors import OutOfResources, UnreadableDataset

CHUNK = 1 << 20
IMPLEMENTATION_VERSION_NAME = ("MURA_NODE_" + __version__.split("+")[0].replace(".", ""))[:16]


@dataclass(frozen=True)
class StagedFile:
    """A complete, not yet durable file in tmp/; commit or discard it."""

    path: Path
    sha256: str  # of the data set bytes as received (file meta excluded)
    size: int


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dataset_offset(path: Path) -> int:
    """Offset of the data set in a Part 10 file (File Meta is always explicit VR little endian)."""
    with path.open("rb") as fp:
        head = fp.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
        raise UnreadableDataset("received file has no File Meta Information group length")
    (length,) = struct.unpack("<I", head[140:144])
    return 144 + length


class FileStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir.resolve()
        self.tmp = self.root / "tmp"
        self.instances = self.root / "instances"

    def prepare(self) -> None:
        """Create the layout (owner-only permissions) and remove staging files of a crashed run."""
        for directory in (self.root, self.tmp, self.instances):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self.tmp.glob("*.part"):
            leftover.unlink(missing_ok=True)

    def stage(
        self,
        source: BinaryIO,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        source_ae_title: str,
    ) -> StagedFile:
        """Copy the data set bytes of ``source`` (read to its end) behind a fresh File Meta."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class_uid)
        meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
        meta.TransferSyntaxUID = UID(transfer_syntax_uid)
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        if source_ae_title:
            meta.SourceApplicationEntityTitle = source_ae_title
        header = BytesIO()
        header.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(header, meta)  # type: ignore[arg-type]
        path = self.tmp / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb", buffering=0) as out:
                out.write(header.getvalue())
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise OutOfResources(f"cannot write staging file: {exc.strerror or exc}") from exc
        return StagedFile(path=path, sha256=digest.hexdigest(), size=size)

    def relative_path_for(self, sha256: str) -> str:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a SHA-256 hex digest")
        return f"instances/{sha256[:2]}/{sha256}.dcm"

    def commit(self, staged: StagedFile) -> str:
        """Make the staged file durable under its content name; return the relative path."""
        relative = self.relative_path_for(staged.sha256)
        final = self.root / relative
        try:
            with staged.path.open("rb+") as fp:
                os.fsync(fp.fileno())
            shard = final.parent
            if not shard.is_dir():
                shard.mkdir(mode=0o700, exist_ok=True)
                fsync_directory(self.instances)
            os.replace(staged.path, final)
            fsync_directory(shard)
        except OSError as exc:
            staged.path.unlink(missing_ok=True)
            raise OutOfResources(f"cannot store file: {exc.strerror or exc}") from exc
        return relative

    def discard(self, staged: StagedFile) -> None:
        staged.path.unlink(missing_ok=True)

    def remove(self, relative: str) -> None:
        """Delete a stored file (after the database no longer names it)."""
        path = self.path_of(relative)
        path.unlink(missing_ok=True)

    def path_of(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError("path outside the data directory")
        return path

    @contextmanager
    def staged(self, staged: StagedFile) -> Iterator[StagedFile]:
        """Discard the staging file unless it was committed inside the block."""
        try:
            yield staged
        finally:
            if staged.path.exists():
                self.discard(staged)
