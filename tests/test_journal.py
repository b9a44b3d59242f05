"""The one journal writer (shared/journal.py): next number, create-only, conflicts, retries."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared.catalog import CatalogRow, decode_batch, encode_batch
from shared.dicom import Header
from shared.errors import ChecksumMismatch
from shared.journal import Journal
from shared.keys import catalog_key
from shared.store.base import ObjectInfo, ObjectStore, open_store


def _row(n: int) -> CatalogRow:
    h = Header(f"1.2.3.{n}", "1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.3.1", "1.2.840.10008.1.2.1")
    return CatalogRow(h, 10, "00000000", f"instances/x/{n}.dcm", "cloud", time.time())


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path / 'bucket'}")


def test_appends_after_the_last_object_and_skips_taken_numbers(store: ObjectStore) -> None:
    j = Journal(store, "cloud")
    assert j.append([_row(1)]) == (1, catalog_key("cloud", 1))
    other = Journal(store, "cloud")  # another replica, started before our next append
    assert other.next_sequence() == 2
    assert j.append([_row(2)])[0] == 2
    seq, _ = other.append([_row(3)])  # 2 is taken by us: the next number, nothing overwritten
    assert seq == 3
    with store.open(catalog_key("cloud", 2)) as fh:
        assert decode_batch(fh.read())[0].header.sop_instance_uid == "1.2.3.2"
    assert Journal(store, "cloud", start=2).next_sequence() == 4  # listing from a hint


def test_our_own_landed_put_is_ours(store: ObjectStore) -> None:
    """A retried create-only put that meets its own first attempt takes the same number."""
    data = encode_batch([_row(5)])
    store.put(catalog_key("cloud", 1), data)
    j = Journal(store, "cloud", start=1)
    j._next = 1  # as if listed before the first attempt landed
    assert j.append(data) == (1, catalog_key("cloud", 1))
    assert [i.key for i in store.list("catalog/cloud/")] == [catalog_key("cloud", 1)]


class _CorruptingStore:
    """Fake (a store that reports another crc32c than the bytes sent cannot be had on demand):
    wraps a real store and misreports the crc32c of the first put."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner, self.url, self.bad = inner, inner.url, True

    def put(self, key: str, source: bytes, **kw: object) -> ObjectInfo:  # type: ignore[override]
        info = self.inner.put(key, source, **kw)  # type: ignore[arg-type]
        if self.bad:
            self.bad = False
            return ObjectInfo(info.key, info.size, "deadbeef")
        return info

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_corrupted_put_is_deleted_and_reported(store: ObjectStore) -> None:
    j = Journal(_CorruptingStore(store), "cloud")  # type: ignore[arg-type]
    with pytest.raises(ChecksumMismatch):
        j.append([_row(1)])
    assert list(store.list("catalog/cloud/")) == []
    assert j.append([_row(1)])[0] == 1
