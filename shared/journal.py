"""The one catalog journal writer: rows appended as `catalog/<site>/<seq>.jsonl.gz`.

Used by the sync agent (`sync/catalog.py`) and the cloud API's STOW (`cloud_api/stow.py`), so
both append the same way: the next sequence number is one past the last object listed from a
hint (the caller's last known sequence), the put is create-only, and the crc32c the store
reports for the object must equal the crc32c of the bytes we encoded. A create-only put that
meets an object with our own bytes (a retried put whose first attempt landed) is ours; any
other object there was written by another writer (a replica, or our own batch before a crash),
so we take the next number. Objects are never rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.catalog import CatalogRow, encode_batch
from shared.checksum import crc32c_bytes
from shared.errors import ChecksumMismatch, DuplicateConflict, NotFound, ObjectExists
from shared.keys import catalog_key, catalog_prefix, catalog_sequence
from shared.store.base import ObjectStore

MAX_CONFLICTS = 100
CONTENT_TYPE = "application/gzip"


class Journal:
    """Appends to one site's journal. Not thread-safe: one per writer thread or under a lock."""

    def __init__(self, store: ObjectStore, site: str, start: int = 1) -> None:
        self.store = store
        self.site = site
        self._start = max(1, start)  # no object below this sequence matters (a hint)
        self._next: int | None = None

    def next_sequence(self) -> int:
        """One past the last object at or after the hint (listed once, then remembered)."""
        if self._next is None:
            last = self._start - 1
            first = catalog_key(self.site, self._start)
            for info in self.store.list(catalog_prefix(self.site), start_offset=first):
                last = max(last, catalog_sequence(info.key))
            self._next = last + 1
        return self._next

    def append(self, rows: Sequence[CatalogRow] | bytes) -> tuple[int, str]:
        """Write rows (or an encoded batch) as the next object; returns (sequence, key)."""
        data = rows if isinstance(rows, bytes) else encode_batch(list(rows))
        crc = crc32c_bytes(data)
        for _ in range(MAX_CONFLICTS):
            seq = self.next_sequence()
            key = catalog_key(self.site, seq)
            try:
                info = self.store.put(key, data, content_type=CONTENT_TYPE, if_absent=True)
            except ObjectExists:
                existing = self.store.head(key)
                if existing is None or existing.crc32c != crc:
                    self._next = seq + 1  # another writer took this number
                    continue
                info = existing  # our own earlier attempt landed
            if info.crc32c != crc:
                self._delete_own(key)
                raise ChecksumMismatch(f"catalog object {key} is not the bytes we wrote")
            self._next = seq + 1
            return seq, key
        raise DuplicateConflict(f"no free catalog sequence number for site {self.site}")

    def _delete_own(self, key: str) -> None:
        """A corrupted create of ours: remove it so the number can be used again."""
        try:
            self.store.delete(key)
        except NotFound:
            pass
        self._next = None
