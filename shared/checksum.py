"""Checksums as GCS reports them: crc32c (we keep hex in the index, GCS speaks base64)."""

from __future__ import annotations

import base64
from pathlib import Path

import google_crc32c

CHUNK = 1024 * 1024


def crc32c_file(path: str | Path) -> str:
    """Hex crc32c of a whole file, read in chunks."""
    h = google_crc32c.Checksum()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.digest().hex()


def crc32c_bytes(data: bytes) -> str:
    return google_crc32c.Checksum(data).digest().hex()


class Crc32c:
    """Incremental crc32c for streams (hex digest); takes any bytes-like chunk
    (`google_crc32c.extend` reads only read-only buffers, so a view of a reused receive
    buffer is copied first)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.value = google_crc32c.extend(self.value, data if type(data) is bytes else bytes(data))

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def hex_to_b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def b64_to_hex(b64_digest: str) -> str:
    return base64.b64decode(b64_digest).hex()
