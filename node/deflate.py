"""Bounded reading of Deflated Explicit VR Little Endian files (1.2.840.10008.1.2.1.99).

pydicom inflates a deflated data set whole before it reads a single element, however large it
inflates: a deflate bomb of a few hundred kilobytes is gigabytes. The node reads such files only
through `DeflatedReader`, which inflates as far as the caller allows: the header
(`HEADER_BYTES`, enough for any real header) at ingest, and at most what the image needs when it
is decoded (node/inference/imaging.py). The start of a data set still arriving (node/receive/headers.py) is
inflated with `inflate_start`, as far as its own limit. Every inflate of the node is here.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

HEADER_BYTES = 16 * 1024 * 1024
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


class DeflatedReader:
    """The inflated bytes of a deflated file's data set, inflated on demand up to a limit.

    Use as a context manager: ``with DeflatedReader(path) as reader: reader.inflate_to(n)``;
    ``reader.inflated`` holds what was inflated so far (never more than the largest limit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.inflated = bytearray()
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._fp: BinaryIO | None = None

    def __enter__(self) -> DeflatedReader:
        self._fp = self.path.open("rb")
        skip_file_meta(self._fp)
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self._fp is not None:
            self._fp.close()

    def inflate_to(self, limit: int) -> None:
        """Inflate until ``limit`` bytes are held or the stream ends."""
        assert self._fp is not None, "use DeflatedReader as a context manager"
        while len(self.inflated) < limit and not self._inflater.eof:
            data = self._inflater.unconsumed_tail or self._fp.read(1 << 20)
            if not data:
                return
            self.inflated.extend(self._inflater.decompress(data, limit - len(self.inflated)))

    def dataset(self, *, stop_before_pixels: bool = False) -> Dataset:
        """The data set in the bytes inflated so far (up to its pixel data if asked)."""
        return read_dataset(
            io.BytesIO(bytes(self.inflated)),
            False,
            True,
            stop_when=(lambda tag, _vr, _length: int(tag) in PIXEL_TAGS)
            if stop_before_pixels
            else None,
        )


def read_deflated_header(path: Path) -> Dataset:
    """The data set of a deflated file up to its pixel data, from at most `HEADER_BYTES`."""
    with DeflatedReader(path) as reader:
        reader.inflate_to(HEADER_BYTES)
        return reader.dataset(stop_before_pixels=True)


def inflate_start(compressed: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes inflated from the start of a raw deflate stream (RFC 1951, as in
    a deflated data set after its File Meta); a stream cut off early gives what it holds."""
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(compressed, limit)


def skip_file_meta(fp: BinaryIO) -> None:
    """Position ``fp`` after the preamble, the DICM prefix and the File Meta group (0002), which
    is always Explicit VR Little Endian (PS3.10 7.1)."""
    fp.seek(132)
    while True:
        start = fp.tell()
        head = fp.read(8)
        if len(head) < 8 or struct.unpack("<H", head[:2])[0] != 0x0002:
            fp.seek(start)
            return
        if head[4:6] in _LONG_LENGTH_VRS:
            length = struct.unpack("<L", fp.read(4))[0]
        else:
            length = struct.unpack("<H", head[6:8])[0]
        fp.seek(length, 1)
