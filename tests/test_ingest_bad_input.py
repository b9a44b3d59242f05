"""Bad input over C-STORE: each case gets its exact status, and no file lands outside the cache.

pynetdicom is the peer: send_c_store(path) takes the command's UIDs from the file meta and
sends the bytes after it unparsed, which is how crafted datasets reach the wire.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import _config

import edge.ingest
from edge.server import EdgeServer
from shared.checksum import crc32c_file
from shared.errors import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from shared.synthetic import StudySpec, iter_study, uid
from tests.support.edge import (
    association,
    edge_config,
    encoded_dataset,
    files_under,
    part10_with_raw_dataset,
    running_edge,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def make_edge(tmp_path: Path) -> Iterator[Any]:
    """Start edges on tmp_path/edge with config overrides; all stopped at teardown."""
    stack: list[Any] = []

    def start(**edge: Any) -> EdgeServer:
        cm = running_edge(edge_config(tmp_path, **edge))
        server = cm.__enter__()
        stack.append(cm)
        return server

    yield start
    while stack:
        stack.pop().__exit__(None, None, None)


def _dataset(**overrides: str) -> pydicom.Dataset:
    ds = next(iter_study(StudySpec(instances_per_series=1)))
    for k, v in overrides.items():
        setattr(ds, k, v)
    return ds


def _send(server: EdgeServer, path: Path) -> int:
    """Send a file as it is: file meta -> command UIDs, the rest -> the wire, unparsed."""
    with association(server.ports[0]) as assoc:
        assert assoc.is_established
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            rsp = assoc.send_c_store(path)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
    return int(rsp.Status)


def _crafted(tmp_path: Path, ds: pydicom.Dataset, name: str, **meta: str) -> Path:
    meta.setdefault("sop_class_uid", str(ds.SOPClassUID))
    meta.setdefault("sop_instance_uid", uid())
    return part10_with_raw_dataset(tmp_path / "in" / name, encoded_dataset(ds), **meta)


def _cache_files(server: EdgeServer) -> set[Path]:
    return {p for p in files_under(server.cache.root) if server.cache.tmp not in p.parents}


def _assert_only_cache_and_index(tmp_path: Path, server: EdgeServer, n_cached: int) -> None:
    """Nothing outside the cache's fan-out paths and the index, and no temp leftovers."""
    allowed_outside = {
        server.db.path.name,
        server.db.path.name + "-wal",
        "index.sqlite-shm",
        "associations.slots",  # edge/slots.py: the association limit's lock records
    }
    for p in files_under(tmp_path):
        if (tmp_path / "in") in p.parents:
            continue
        if server.cache.root in p.parents:
            rel = p.relative_to(server.cache.root)
            assert rel.parts[0] != "tmp", f"temp leftover {rel}"
            assert len(rel.parts) == 3 and rel.suffix == ".dcm", f"unexpected cache file {rel}"
            continue
        assert p.name in allowed_outside, f"file outside the cache: {p}"
    assert len(_cache_files(server)) == n_cached


def _rows(server: EdgeServer) -> list[sqlite3.Row]:
    return server.db.reader().execute("SELECT * FROM instances").fetchall()


@pytest.mark.parametrize(
    ("name", "overrides", "status"),
    [
        ("bad-component", {"SOPInstanceUID": "1.2.03.4"}, DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("path-escape", {"SOPInstanceUID": "../../x"}, DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("absolute", {"SOPInstanceUID": "/etc/passwd"}, DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("too-long", {"SOPInstanceUID": "1.2." + "1" * 200}, DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("study-uid", {"StudyInstanceUID": "1.2.x"}, DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("series-uid", {"SeriesInstanceUID": "../series"}, DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_invalid_uid_in_dataset_is_refused(
    make_edge: Any, tmp_path: Path, name: str, overrides: dict[str, str], status: int
) -> None:
    server = make_edge()
    ds = _dataset(**overrides)
    # The command carries a valid instance UID equal to the dataset's whenever that is valid,
    # so the check that answers is the UID check, not the mismatch check.
    command_uid = ds.SOPInstanceUID if "SOPInstanceUID" not in overrides else uid()
    path = _crafted(tmp_path, ds, f"{name}.dcm", sop_instance_uid=command_uid)
    assert _send(server, path) == status
    assert _rows(server) == []
    _assert_only_cache_and_index(tmp_path, server, 0)
    assert not (tmp_path.parent / "x").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_invalid_uid_in_command_and_dataset_never_becomes_a_path(
    make_edge: Any, tmp_path: Path
) -> None:
    server = make_edge()
    for i, bad in enumerate(["../../x", "..", "1.2.3/../../../y"]):
        ds = _dataset(SOPInstanceUID=bad)
        path = _crafted(tmp_path, ds, f"{i}.dcm", sop_instance_uid=bad)
        assert _send(server, path) == DATASET_DOES_NOT_MATCH_SOP_CLASS
    _assert_only_cache_and_index(tmp_path, server, 0)


@pytest.mark.parametrize("which", ["instance", "class"])
def test_command_uids_must_match_the_dataset(make_edge: Any, tmp_path: Path, which: str) -> None:
    server = make_edge()
    ds = _dataset()
    if which == "instance":
        path = _crafted(tmp_path, ds, "m.dcm", sop_instance_uid=uid())
    else:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR in the dataset, CT in the command
        path = _crafted(tmp_path, ds, "m.dcm", sop_class_uid=CT, sop_instance_uid=ds.SOPInstanceUID)
    assert _send(server, path) == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert _rows(server) == []
    _assert_only_cache_and_index(tmp_path, server, 0)


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("garbage", b"\xff\xfe\xfd\xfc" * 64),
        ("truncated-element", b"\x08\x00\x18\x00UI\x40\x001.2.3"),
        ("huge-length", b"\x08\x00\x16\x00UI\xff\xff" + b"1" * 16),
        ("no-uids", b"\x10\x00\x10\x00PN\x04\x00AB^C"),
    ],
)
def test_unparseable_dataset_is_cannot_understand(
    make_edge: Any, tmp_path: Path, name: str, payload: bytes
) -> None:
    server = make_edge()
    path = part10_with_raw_dataset(tmp_path / "in" / f"{name}.dcm", payload, sop_class_uid=CT)
    status = _send(server, path)
    assert status & 0xF000 == CANNOT_UNDERSTAND, hex(status)
    assert _rows(server) == []
    _assert_only_cache_and_index(tmp_path, server, 0)


def _store_one(server: EdgeServer, tmp_path: Path, name: str = "first.dcm") -> tuple[Path, str]:
    ds = _dataset()
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    assert _send(server, path) == SUCCESS
    return path, str(ds.SOPInstanceUID)


def _stored_crc(server: EdgeServer) -> dict[str, str]:
    return {p.name: crc32c_file(p) for p in _cache_files(server)}


def test_cache_below_min_free_bytes_is_out_of_resources(make_edge: Any, tmp_path: Path) -> None:
    server = make_edge()
    _store_one(server, tmp_path)
    before = _stored_crc(server)
    server.stop()
    server.db.close()
    full = make_edge(port=server.cfg.edge.port, min_free_bytes=2**62)
    ds = _dataset()
    path = tmp_path / "in" / "second.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert _send(full, path) == OUT_OF_RESOURCES
    assert _stored_crc(full) == before
    assert len(_rows(full)) == 1
    _assert_only_cache_and_index(tmp_path, full, 1)


@pytest.mark.parametrize("where", ["fsync_file", "durable_link"])
def test_enospc_is_out_of_resources(
    make_edge: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    server = make_edge()
    _store_one(server, tmp_path)
    before = _stored_crc(server)

    def no_space(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(edge.ingest, where, no_space)  # our own helper, not a library
    path = tmp_path / "in" / "second.dcm"
    _dataset().save_as(path, enforce_file_format=True)
    assert _send(server, path) == OUT_OF_RESOURCES
    assert _stored_crc(server) == before
    assert len(_rows(server)) == 1
    _assert_only_cache_and_index(tmp_path, server, 1)


def test_index_failure_removes_the_file_and_fails(
    make_edge: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_edge()

    def broken(*_a: object, **_k: object) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(edge.ingest, "index_instance", broken)
    path = tmp_path / "in" / "x.dcm"
    path.parent.mkdir(parents=True)
    _dataset().save_as(path, enforce_file_format=True)
    assert _send(server, path) == OUT_OF_RESOURCES
    assert _rows(server) == []
    _assert_only_cache_and_index(tmp_path, server, 0)


def test_identical_duplicate_succeeds_without_a_second_copy(make_edge: Any, tmp_path: Path) -> None:
    server = make_edge()
    path, _ = _store_one(server, tmp_path)
    assert _send(server, path) == SUCCESS
    assert _send(server, path) == SUCCESS
    assert len(_rows(server)) == 1
    study = server.db.reader().execute("SELECT num_instances FROM studies").fetchone()
    assert study["num_instances"] == 1
    _assert_only_cache_and_index(tmp_path, server, 1)


def _changed_copy(path: Path, tmp_path: Path) -> Path:
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = "changed"
    out = tmp_path / "in" / "changed.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def test_different_bytes_policy_keep(
    make_edge: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = make_edge(duplicates="keep")
    path, sop_uid = _store_one(server, tmp_path)
    before = _stored_crc(server)
    assert _send(server, _changed_copy(path, tmp_path)) == DUPLICATE_SOP_INSTANCE
    assert _stored_crc(server) == before
    (row,) = _rows(server)
    assert row["crc32c"] == crc32c_file(server.cache.path(row["path"]))
    assert any(
        "policy=keep" in r.getMessage() and sop_uid in r.getMessage() for r in caplog.records
    )
    _assert_only_cache_and_index(tmp_path, server, 1)


def test_different_bytes_policy_replace(
    make_edge: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = make_edge(duplicates="replace")
    path, sop_uid = _store_one(server, tmp_path)
    before = _stored_crc(server)
    changed = _changed_copy(path, tmp_path)
    assert _send(server, changed) == SUCCESS
    after = _stored_crc(server)
    # the new bytes got a new cache file; the old one is gone once the row points there
    assert len(after) == 1 and after.keys() != before.keys()
    assert set(after.values()) != set(before.values())
    (row,) = _rows(server)
    assert server.cache.path(row["path"]).name in after
    stored = server.cache.path(row["path"])
    assert row["crc32c"] == crc32c_file(stored)
    assert pydicom.dcmread(stored).SeriesDescription == "changed"
    assert row["state"] == "cached"
    assert any(
        "policy=replace" in r.getMessage() and sop_uid in r.getMessage() for r in caplog.records
    )
    _assert_only_cache_and_index(tmp_path, server, 1)


def _evict(server: EdgeServer, sop_uid: str) -> None:
    """What the sync agent does to a verified instance: the row stays, the file goes."""
    from shared.lifecycle import State, transition

    row = (
        server.db.reader()
        .execute("SELECT id, path FROM instances WHERE sop_instance_uid = ?", (sop_uid,))
        .fetchone()
    )
    with server.db.write() as conn:
        for src, dst in [
            (State.CACHED, State.UPLOADING),
            (State.UPLOADING, State.SYNCED),
            (State.SYNCED, State.EVICTING),
            (State.EVICTING, State.EVICTED),
        ]:
            assert transition(conn, row["id"], src, dst)
    server.cache.path(row["path"]).unlink()


@pytest.mark.parametrize("policy", ["keep", "replace"])
def test_resending_an_evicted_instance(make_edge: Any, tmp_path: Path, policy: str) -> None:
    """Modalities resend: an evicted instance (row, no file) must not fail the C-STORE."""
    server = make_edge(duplicates=policy)
    path, sop_uid = _store_one(server, tmp_path)
    _evict(server, sop_uid)
    assert _send(server, path) == SUCCESS  # identical bytes: the verified cloud copy stands
    (row,) = _rows(server)
    assert row["state"] == "evicted"
    _assert_only_cache_and_index(tmp_path, server, 0)
    status = _send(server, _changed_copy(path, tmp_path))
    (row,) = _rows(server)
    if policy == "keep":
        assert status == DUPLICATE_SOP_INSTANCE
        assert row["state"] == "evicted"
        _assert_only_cache_and_index(tmp_path, server, 0)
    else:
        assert status == SUCCESS
        assert row["state"] == "cached"
        assert row["crc32c"] == crc32c_file(server.cache.path(row["path"]))
        _assert_only_cache_and_index(tmp_path, server, 1)


def test_object_over_max_object_bytes_is_refused(make_edge: Any, tmp_path: Path) -> None:
    server = make_edge(max_object_bytes=4096)
    path = tmp_path / "in" / "big.dcm"
    path.parent.mkdir(parents=True)
    _dataset().save_as(path, enforce_file_format=True)
    assert path.stat().st_size > 4096
    assert _send(server, path) == OUT_OF_RESOURCES
    assert _rows(server) == []
    _assert_only_cache_and_index(tmp_path, server, 0)
