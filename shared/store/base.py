"""The object store interface. Every backend passes the same contract suite.

Holds: `set_hold` mirrors the index's legal holds (shared/deletion.py) onto the objects, where
the backend can keep them (GCS temporary holds; file:// keeps a marker that refuses deletes).

Errors: `shared.errors.NotFound` (no such key), `ObjectExists` (create-only put met an
existing object), `TransientStoreError` (retrying may help), `PermanentStoreError`.
Checksums are hex strings (crc32c always; md5 where the backend has it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    crc32c: str  # hex
    md5: str = ""  # hex, "" when unknown
    content_type: str = "application/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)
    updated: float = 0.0  # seconds since the epoch


class ObjectStore(Protocol):
    url: str

    def put(
        self,
        key: str,
        source: Path | bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        if_absent: bool = True,
    ) -> ObjectInfo:
        """Write an object; with `if_absent` (the default) never overwrite: ObjectExists."""
        ...

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """A readable stream of bytes [start, end) of the object (end None: to the end)."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """Size, checksums and metadata; None when there is no such object."""
        ...

    def delete(self, key: str) -> None:
        """Delete an object; NotFound when there is none."""
        ...

    def list(self, prefix: str, start_offset: str = "") -> Iterator[ObjectInfo]:
        """Objects under `prefix` in key order, keys >= start_offset when given."""
        ...

    def set_hold(self, key: str, held: bool) -> bool:
        """Place or lift a legal hold on an object: while held, `delete` is refused
        (PermanentStoreError). Returns whether the store reports the hold as asked (False: the
        backend accepted the request but does not keep holds, e.g. a GCS emulator)."""
        ...


def open_store(url: str, *, emulator_host: str = "", timeout_s: float = 60.0) -> ObjectStore:
    """`gs://bucket[/prefix]` or `file:///abs/dir` (or `file://relative/dir`).

    `emulator_host` (a GCS emulator's URL) and `timeout_s` (per request) concern `gs://` only.
    """
    if url.startswith("gs://"):
        from shared.store.gcs import GcsStore

        return GcsStore(url, emulator_host=emulator_host, timeout_s=timeout_s)
    if url.startswith("file://"):
        from shared.store.filestore import FileStore

        return FileStore(url)
    raise ValueError(f"unsupported object store URL {url!r}: use gs://bucket or file:///dir")
