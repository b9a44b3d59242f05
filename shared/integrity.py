"""Reading a cached file while checking it against the crc32c recorded at ingest.

Every read of a cached file that leaves the process (C-MOVE, C-GET, routing, WADO, recall into
the cache) goes through here, so damaged bytes are noticed on the one pass that serves them.
The check happens *before* the last bytes are handed over: a streaming caller that has sent
everything but the final chunk can still fail the operation instead of completing a transfer
of damaged data (for C-STORE, the last P-DATA fragment carries the "last" bit).

What to do about a damaged file (quarantine, fetch the verified cloud copy) is the caller's
policy; this module only detects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from shared.checksum import Crc32c
from shared.errors import CorruptInstance

CHUNK = 1024 * 1024


class VerifyingReader:
    """A read-only file wrapper that raises `CorruptInstance` instead of returning the bytes
    that complete a file whose size or crc32c differs from what the index recorded.

    `read(n)` returns at most n bytes; the read that reaches the end of the file checks the
    whole file first (the tail it is about to return included) and raises on a mismatch, so no
    caller ever holds the complete bytes of a damaged file.
    """

    def __init__(self, fh: BinaryIO, crc32c: str, size: int, name: str = "") -> None:
        self._fh = fh
        self._crc = Crc32c()
        self._expected = crc32c.lower()
        self._size = size
        self._pos = 0
        self._done = False
        self.name = name

    @property
    def size(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        want = self._size - self._pos if n is None or n < 0 else min(n, self._size - self._pos)
        data = self._fh.read(want) if want > 0 else b""
        self._crc.update(data)
        self._pos += len(data)
        if self._pos >= self._size or len(data) < want:
            # the end as the index knows it: any extra byte or a short file is damage too
            extra = self._fh.read(1)
            self._done = True
            if extra or self._pos != self._size or self._crc.hexdigest() != self._expected:
                raise CorruptInstance(
                    f"{self.name or 'cached file'}: bytes differ from the crc32c recorded at "
                    f"ingest (size {self._pos}{'+' if extra else ''} of {self._size})"
                )
        return data

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_verified(path: str | Path, crc32c: str, size: int, name: str = "") -> VerifyingReader:
    """Open a cached file for one verified pass (`name` goes into the error: a UID, not PHI)."""
    fh = open(path, "rb")  # noqa: SIM115 - owned by the returned reader
    try:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass
    return VerifyingReader(fh, crc32c, size, name)


def read_verified(path: str | Path, crc32c: str, size: int, name: str = "") -> bytes:
    """The whole file, verified in the same pass; `CorruptInstance` when damaged."""
    with open_verified(path, crc32c, size, name) as reader:
        parts = []
        while chunk := reader.read(CHUNK):
            parts.append(chunk)
        reader.read()  # a zero-length file is checked by its first (empty) read
        return b"".join(parts)
