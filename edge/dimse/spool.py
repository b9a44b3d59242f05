"""C-STORE datasets received straight into a Part-10 temp file in the cache filesystem.

The file gets the preamble, the File Meta (from the command's UIDs and the context's transfer
syntax) and then every PDV fragment as it comes off the socket: nothing of the object is held
in memory, and `Ingestor.ingest_temp` links the file into place (same filesystem). Two limits
apply while the data arrive, not after:
- `max_bytes` (edge.max_object_bytes): the moment the file would exceed it, it is deleted and
  the rest of the dataset is read and dropped; the service answers 0xA700. Nothing is kept.
- a write error (ENOSPC, EIO) is remembered, the file deleted at once to give the space back,
  the rest dropped; the service answers 0xA700 instead of leaving the peer without a response.
The file stays open after the last fragment, and its crc32c is computed as the fragments are
written: ingest reads, checksums and fsyncs it through that descriptor (`received()`) instead
of opening and reading it again; `close()` (or `discard()`) ends it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from edge.dimse.negotiation import IMPLEMENTATION_UID, IMPLEMENTATION_VERSION
from shared.checksum import Crc32c

PREAMBLE = b"\0" * 128 + b"DICM"


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _explicit(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH", 0x0002, elem) + b"OB\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", 0x0002, elem) + vr + struct.pack("<H", len(value)) + value


def encode_file_meta(
    sop_class: str,
    sop_instance: str,
    transfer_syntax: str,
    impl_uid: str = IMPLEMENTATION_UID,
    impl_version: str = IMPLEMENTATION_VERSION,
) -> bytes:
    """The File Meta group (explicit VR LE) of a received object, byte-equal to what pydicom's
    `write_file_meta_info` writes for pynetdicom's `create_file_meta` (tested)."""
    version = impl_version.encode("ascii")
    version += b" " if len(version) % 2 else b""
    body = (
        _explicit(0x0001, b"OB", b"\x00\x01")
        + _explicit(0x0002, b"UI", _uid(sop_class))
        + _explicit(0x0003, b"UI", _uid(sop_instance))
        + _explicit(0x0010, b"UI", _uid(transfer_syntax))
        + _explicit(0x0012, b"UI", _uid(impl_uid))
        + _explicit(0x0013, b"SH", version)
    )
    return _explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body


def _safe_uid(value: str) -> str:
    """A command UID as it may go into the file meta (the dataset's own UIDs are compared
    with the command's by ingest; a UID that is not plain ASCII cannot be written there)."""
    if value.isascii() and "\0" not in value and len(value) <= 64:
        return value
    return ""


class SpoolFile:
    """A sink (edge/dimse/engine.py) writing one received dataset to `<directory>/<random>.dcm`."""

    def __init__(
        self,
        directory: Path,
        sop_class: str,
        sop_instance: str,
        transfer_syntax: str,
        max_bytes: int = 0,
    ) -> None:
        self.path = Path(os.path.join(directory, os.urandom(8).hex() + ".dcm"))
        self.max_bytes = max_bytes
        self.size = 0
        self.error: OSError | None = None
        self.exceeded = False
        self.crc = Crc32c()
        self._fd = -1
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self.error = exc
            return
        meta = encode_file_meta(_safe_uid(sop_class), _safe_uid(sop_instance), transfer_syntax)
        self.write(PREAMBLE + meta)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.exceeded

    @property
    def fd(self) -> int:
        """The open file (-1 once closed or dropped)."""
        return self._fd

    def write(self, data: bytes | memoryview) -> None:
        n = len(data)
        self.size += n
        if not self.ok:
            return
        if self.max_bytes and self.size > self.max_bytes:
            self.exceeded = True
            self._drop()
            return
        try:
            done = os.write(self._fd, data)
            while done < n:
                done += os.write(self._fd, data[done:])
        except OSError as exc:
            self.error = exc
            self._drop()
            return
        self.crc.update(data)

    def finish(self) -> None:
        """The last fragment arrived: the file stays open for ingest (see the docstring)."""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        self._drop()

    def _drop(self) -> None:
        """Close and delete: nothing of a refused or failed object is kept."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            pass


class DrainSink:
    """Reads a dataset nobody will store (a refused C-STORE): counts, keeps nothing."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: memoryview) -> None:
        self.size += len(data)

    def finish(self) -> None:
        pass

    def discard(self) -> None:
        pass
