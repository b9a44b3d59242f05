"""kill -9 in the middle of a replace (`edge.duplicates = "replace"`): old or new bytes, each
with a consistent row, and start-up reconcile removes the file of whichever side lost.

`hpacs-edge serve` runs as a real process. A precise crash point cannot be produced by a peer,
so the process is started through a two-line wrapper that replaces one of our own ingest
helpers with `SIGKILL` to itself: `transition` (inside the switch transaction, before the row
changes: the transaction never commits) or `_retire` (after the commit, before the old file is
unlinked). Everything else is the real edge, the real C-STORE, the real restart.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import _config

import edge.ingest as ingest_module
from shared import acceptance
from shared.checksum import crc32c_file
from shared.errors import IndexUnavailable, InstanceBusy
from shared.index import connect
from shared.lifecycle import State, transition
from shared.rows import Origin
from shared.synthetic import StudySpec, write_study
from tests.support.edge import association, edge_config, write_toml
from tests.support.edgeproc import edge_process
from tests.support.routing import EdgeParts, edge_parts, routing_config

CT = "1.2.840.10008.5.1.4.1.1.2"
CRASH = (
    "import os, signal, sys\n"
    "import edge.ingest\n"
    "setattr(edge.ingest, sys.argv.pop(1), lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))\n"
    "from edge.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _store(port: int, path: Path) -> int | None:
    with association(port, contexts=[(CT, ["1.2.840.10008.1.2.1"])]) as a:
        assert a.is_established
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            rsp = a.send_c_store(path)
        except Exception:
            return None
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        return int(rsp.Status) if rsp is not None and "Status" in rsp else None


def _dataset_bytes(path: Path) -> bytes:
    return path.read_bytes()[acceptance.check(path).dataset_offset :]


def _instance_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*.dcm") if "tmp" not in p.relative_to(cache).parts]


@pytest.mark.parametrize(("crash_at", "survivor"), [("transition", "old"), ("_retire", "new")])
def test_kill_9_during_replace_leaves_old_or_new_consistently(
    tmp_path: Path, crash_at: str, survivor: str
) -> None:
    data: dict[str, Any] = edge_config(tmp_path, duplicates="replace")
    config = write_toml(tmp_path / "hpacs.toml", data)
    log = tmp_path / "edge.log"
    port = data["edge"]["port"]
    old = write_study(StudySpec(instances_per_series=1), tmp_path / "in")[0]
    ds = pydicom.dcmread(old)
    ds.SeriesDescription = "the new version"
    new = tmp_path / "in" / "new.dcm"
    ds.save_as(new, enforce_file_format=True)
    cache = Path(data["edge"]["data_dir"]) / "cache"

    with edge_process(config, log, CRASH, crash_at) as proc:
        assert _store(port, old) == 0
        assert _store(port, new) is None  # the edge died before it could answer
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
    assert len(_instance_files(cache)) == 2  # both versions on disk: one of them lost

    with edge_process(config, log):  # start-up reconcile
        db = connect(Path(data["edge"]["data_dir"]) / "index.sqlite")
        (row,) = db.execute("SELECT path, size, crc32c, state FROM instances").fetchall()
        db.close()
        (only,) = _instance_files(cache)
        assert only == cache / row["path"]
        assert (only.stat().st_size, crc32c_file(only)) == (row["size"], row["crc32c"])
        expected = old if survivor == "old" else new
        assert _dataset_bytes(only) == _dataset_bytes(expected)  # the File Meta is the edge's
        assert row["state"] == "cached"
    text = log.read_text()
    assert "removed the file of an interrupted replace" in text
    assert "replace_leftovers=1" in text
    # the survivor is served: a second replace from here works and leaves one file
    with edge_process(config, log):
        other = old if survivor == "new" else new
        assert _store(port, other) == 0
        assert len(_instance_files(cache)) == 1


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[EdgeParts]:
    with edge_parts(routing_config(tmp_path, [], [])) as p:
        p.ingestor.duplicates = "replace"
        yield p


def _changed(src: Path, out: Path) -> Path:
    ds = pydicom.dcmread(src)
    ds.SeriesDescription = "the new version"
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("fault", ["index", "evicting"])
def test_a_failed_replace_keeps_the_old_bytes_and_row(
    tmp_path: Path, parts: EdgeParts, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    old = write_study(StudySpec(instances_per_series=1), tmp_path / "in")[0]
    parts.ingestor.ingest_path(old, Origin("import"))
    before = parts.db.reader().execute("SELECT * FROM instances").fetchone()
    if fault == "index":

        def broken(*_a: object, **_k: object) -> bool:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(ingest_module, "transition", broken)  # our own helper
        expected: type[Exception] = IndexUnavailable
    else:  # the sync agent claimed it for eviction: checked inside the switch transaction
        with parts.db.write() as conn:
            for src, dst in [(State.CACHED, State.UPLOADING), (State.UPLOADING, State.SYNCED)]:
                assert transition(conn, before["id"], src, dst)
            assert transition(conn, before["id"], State.SYNCED, State.EVICTING)
        before = parts.db.reader().execute("SELECT * FROM instances").fetchone()
        expected = InstanceBusy
    with pytest.raises(expected):
        parts.ingestor.ingest_path(_changed(old, tmp_path / "new.dcm"), Origin("import"))
    after = parts.db.reader().execute("SELECT * FROM instances").fetchone()
    assert dict(after) == dict(before)
    (only,) = _instance_files(parts.cache.root)
    assert only == parts.cache.root / after["path"]
    assert crc32c_file(only) == after["crc32c"] == crc32c_file(old)
