"""One contract for every object store backend: file:// and gs:// (through a real GCS emulator)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.checksum import crc32c_bytes
from shared.errors import NotFound, ObjectExists, PermanentStoreError, TransientStoreError
from shared.store import ObjectStore, open_store
from shared.store.filestore import XATTR, FileStore
from tests.support.gcs import fault_proxy, gcs_store, running_emulator
from tests.support.net import free_port


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with running_emulator() as emu:
        yield emu.url


_counter = iter(range(10**6))


@pytest.fixture(params=["file", "gs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return open_store(f"file://{tmp_path / 'bucket'}")
    # each test gets its own key prefix in the module's emulator bucket
    return gcs_store(request.getfixturevalue("emulator"), prefix=f"t{next(_counter)}")


def test_put_head_open_roundtrip(store: ObjectStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    info = store.put("instances/1.2/1.2.3/1.2.3.4.dcm", data, content_type="application/dicom")
    assert info.size == len(data)
    assert info.crc32c == crc32c_bytes(data)
    head = store.head("instances/1.2/1.2.3/1.2.3.4.dcm")
    assert head is not None
    assert (head.size, head.crc32c, head.content_type) == (
        len(data),
        info.crc32c,
        "application/dicom",
    )
    assert head.md5 in ("", info.md5)
    assert store.open("instances/1.2/1.2.3/1.2.3.4.dcm").read() == data
    src = tmp_path / "src.bin"
    src.write_bytes(data[:1000])
    assert store.put("from-file", src).crc32c == crc32c_bytes(data[:1000])
    assert store.open("from-file").read() == data[:1000]


def test_byte_ranges(store: ObjectStore) -> None:
    data = b"0123456789" * 10
    store.put("r", data)
    assert store.open("r", 10, 20).read() == data[10:20]
    assert store.open("r", 95).read() == data[95:]
    assert store.open("r", 0, 1).read() == b"0"


def test_create_only_put_never_overwrites(store: ObjectStore) -> None:
    store.put("k", b"first")
    with pytest.raises(ObjectExists):
        store.put("k", b"second")
    assert store.open("k").read() == b"first"
    store.put("k", b"third", if_absent=False)
    assert store.open("k").read() == b"third"


def test_metadata_kept(store: ObjectStore) -> None:
    store.put("m", b"x", metadata={"site": "dev", "crc": "abc"})
    head = store.head("m")
    assert head is not None and head.metadata == {"site": "dev", "crc": "abc"}


def test_missing_objects(store: ObjectStore) -> None:
    assert store.head("nope") is None
    with pytest.raises(NotFound):
        store.delete("nope")
    with pytest.raises(NotFound):
        store.open("nope").read()


def test_delete(store: ObjectStore) -> None:
    store.put("d/1", b"x")
    store.delete("d/1")
    assert store.head("d/1") is None
    store.put("d/1", b"y")  # create-only works again after a delete
    assert store.open("d/1").read() == b"y"


def test_holds(store: ObjectStore, request: pytest.FixtureRequest) -> None:
    """A held object is not deleted until released, where the backend keeps holds. The GCS
    emulator (fake-gcs-server) accepts the PATCH but keeps no hold and deletes held objects:
    set_hold says so (False), and the refusal itself is only checked on file://."""
    store.put("h/1", b"x")
    honoured = store.set_hold("h/1", True)
    assert honoured is (request.node.callspec.params["store"] != "gs")
    if honoured:
        with pytest.raises(PermanentStoreError, match="hold"):
            store.delete("h/1")
        assert [i.key for i in store.list("h/")] == ["h/1"]  # the marker is never listed
    assert store.set_hold("h/1", False) is True
    store.delete("h/1")
    assert store.head("h/1") is None
    with pytest.raises(NotFound):
        store.set_hold("h/1", True)


def test_list_prefix_order_and_start_offset(store: ObjectStore) -> None:
    keys = ["catalog/a/000000000002.jsonl.gz", "catalog/a/000000000001.jsonl.gz", "catalog/b/x"]
    for k in [*keys, "catalogue", "other/x"]:
        store.put(k, k.encode())
    listed = [i.key for i in store.list("catalog/")]
    assert listed == sorted(keys)
    assert [i.key for i in store.list("catalog/a/")] == sorted(keys[:2])
    after = [i.key for i in store.list("catalog/a/", start_offset=keys[0])]
    assert after == [keys[0]]
    info = next(iter(store.list("catalog/b/")))
    assert (info.size, info.crc32c) == (len(b"catalog/b/x"), crc32c_bytes(b"catalog/b/x"))
    assert [i.key for i in store.list("nothing/")] == []


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b", "a//b", "a/./b", ""])
def test_file_store_keys_cannot_escape(tmp_path: Path, key: str) -> None:
    fs = FileStore(f"file://{tmp_path / 'bucket'}")
    with pytest.raises(PermanentStoreError):
        fs.put(key, b"x")
    assert not (tmp_path / "escape").exists()


def test_file_store_head_survives_lost_metadata(tmp_path: Path) -> None:
    fs = FileStore(f"file://{tmp_path / 'bucket'}")
    fs.put("a/b", b"payload")
    try:
        os.removexattr(tmp_path / "bucket" / "a" / "b", XATTR)
    except OSError:  # no user xattrs here: the metadata went to a sidecar
        (fs.meta / "a" / "b.json").unlink()
    head = fs.head("a/b")
    assert head is not None and head.crc32c == crc32c_bytes(b"payload")


def test_file_store_without_o_tmpfile_or_xattrs(tmp_path: Path) -> None:
    """The fallbacks (named temp file, sidecar) keep the same contract."""
    fs = FileStore(f"file://{tmp_path / 'bucket'}")
    fs._tmpfile_ok = fs._xattr_ok = False
    info = fs.put("a/b", b"payload", metadata={"k": "v"})
    assert info.crc32c == crc32c_bytes(b"payload")
    with pytest.raises(ObjectExists):
        fs.put("a/b", b"other")
    fs.put("a/b", b"other", if_absent=False)
    head = fs.head("a/b")
    assert head is not None and head.crc32c == crc32c_bytes(b"other") and head.size == 5
    assert list((tmp_path / "bucket" / ".tmp").iterdir()) == []
    fresh = FileStore(f"file://{tmp_path / 'bucket'}")  # the default path reads sidecars too
    assert fresh.head("a/b") == head
    fresh.put("a/c", b"xyz", metadata={"k": "w"})
    assert fresh.head("a/c").metadata == {"k": "w"}  # type: ignore[union-attr]
    fresh.delete("a/b")
    assert fresh.head("a/b") is None and not (fs.meta / "a" / "b.json").exists()


def test_gcs_dead_endpoint_is_transient_and_fast() -> None:
    store = gcs_store(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientStoreError):
        store.put("x", b"x")


def test_gcs_missing_bucket_is_permanent(emulator: str) -> None:
    store = gcs_store(emulator, bucket="no-such-bucket")
    with pytest.raises((PermanentStoreError, NotFound)):
        store.put("x", b"x")


@pytest.mark.parametrize(
    ("status", "expected"),
    [(429, TransientStoreError), (503, TransientStoreError), (403, PermanentStoreError)],
)
def test_gcs_http_errors_classified(emulator: str, status: int, expected: type) -> None:
    port = int(emulator.rsplit(":", 1)[1])
    with fault_proxy(port) as proxy:
        proxy.rules.append(lambda m, p: status)
        store = gcs_store(proxy.url, prefix="faults")
        with pytest.raises(expected):
            store.put("x", b"x")
        uploads = [s for s in proxy.seen if s[0] == "POST"]
        assert len(uploads) == (3 if expected is TransientStoreError else 1), proxy.seen


@pytest.mark.parametrize("size", [0, 999, 1000, 2000, 2500])
def test_gcs_large_objects_stream_by_ranges(emulator: str, size: int) -> None:
    """Objects bigger than one range chunk are read chunk by chunk (tiny chunks here)."""
    store = gcs_store(emulator, prefix=f"ranges{size}")
    store.range_chunk = 1000
    data = bytes(i % 251 for i in range(size))
    store.put("big", data)
    assert store.open("big").read() == data
    assert store.open("big", 500, 2100).read() == data[500:2100]
    with store.open("big") as fh:
        assert b"".join(iter(lambda: fh.read(300), b"")) == data
