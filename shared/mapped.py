"""Read-only buffers over DICOM objects of any size, for scans that must not load them.

Objects up to `MAP_ABOVE` bytes are read with one `pread`; larger ones are mapped (`mmap`), so a
1 GB object only pages in what the scan touches. A deflated dataset is inflated as a stream
into an anonymous temp file (refused beyond `MAX_INFLATED_BYTES`) and mapped the same way.
"""

from __future__ import annotations

import io
import mmap
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from shared.errors import InvalidDataset

MAP_ABOVE = 1 << 20
MAX_INFLATED_BYTES = 2 << 30


@contextmanager
def buffer(source: str | os.PathLike[str] | BinaryIO) -> Iterator[tuple[Any, int]]:
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as fh, buffer_of(fh) as got:
            yield got
        return
    with buffer_of(source) as got:
        yield got


@contextmanager
def buffer_fd(fd: int) -> Iterator[tuple[Any, int]]:
    """The same over a file descriptor the caller keeps open (a spool file being ingested)."""
    size = os.fstat(fd).st_size
    if size <= MAP_ABOVE:
        yield os.pread(fd, size, 0), size
        return
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped:
        yield mapped, size


@contextmanager
def buffer_of(fh: BinaryIO) -> Iterator[tuple[Any, int]]:
    if isinstance(fh, io.BytesIO):
        data = fh.getvalue()
        yield data, len(data)
        return
    try:
        fd = fh.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fh.seek(0)
        data = fh.read()
        yield data, len(data)
        return
    size = os.fstat(fd).st_size
    if size <= MAP_ABOVE:
        yield os.pread(fd, size, 0), size
        return
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped:
        yield mapped, size


@contextmanager
def inflated(buf: Any, start: int, size: int) -> Iterator[tuple[Any, int]]:
    """The deflated dataset inflated into an anonymous temp file, streamed and bounded."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    with tempfile.TemporaryFile() as out:
        total = 0
        try:
            for pos in range(start, size, 1 << 20):
                chunk = inflater.decompress(buf[pos : min(pos + (1 << 20), size)], 1 << 24)
                while True:
                    total += len(chunk)
                    if total > MAX_INFLATED_BYTES:
                        raise InvalidDataset(
                            f"deflated dataset inflates beyond {MAX_INFLATED_BYTES} bytes"
                        )
                    out.write(chunk)
                    if not inflater.unconsumed_tail:
                        break
                    chunk = inflater.decompress(inflater.unconsumed_tail, 1 << 24)
                if inflater.eof:
                    break
            out.write(inflater.flush())
        except zlib.error as exc:
            raise InvalidDataset(f"deflated dataset is not a valid deflate stream: {exc}") from exc
        if not inflater.eof:
            raise InvalidDataset("deflated dataset is truncated (the deflate stream never ends)")
        # Bytes after the end of the deflate stream (padding, a gzip-style trailer some
        # writers leave) are not part of the dataset; pydicom and DCMTK ignore them too.
        out.flush()
        with buffer_of(out) as got:  # type: ignore[arg-type]
            yield got
