"""Group commit (edge/commit.py): concurrent stores share transactions; failures stay local."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from edge.commit import GroupCommit
from shared.index import Database


def _insert(key: str):  # type: ignore[no-untyped-def]
    def work(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO settings(key, value) VALUES (?, 'v')", (key,))
        return key

    return work


def test_concurrent_stores_commit_in_fewer_transactions(tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite")
    gc = GroupCommit(db)
    results: dict[str, object] = {}
    start = threading.Barrier(8)

    def worker(i: int) -> None:
        start.wait()
        for j in range(25):
            key = f"k{i}-{j}"
            try:
                results[key] = gc.run(_insert(key))
            except sqlite3.IntegrityError as exc:
                results[key] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[k] == k for k in results) and len(results) == 200
    other = sqlite3.connect(db.path)  # committed: visible to another connection
    assert other.execute("SELECT count(*) FROM settings").fetchone()[0] == 200
    other.close()
    assert gc.items == 200 and gc.batches <= 200
    db.close()


def test_one_failing_store_rolls_back_only_itself(tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite")
    gc = GroupCommit(db)
    gc.run(_insert("dup"))
    with pytest.raises(sqlite3.IntegrityError):
        gc.run(_insert("dup"))

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO settings(key, value) VALUES ('partial', 'v')")
        raise ValueError("hook failed")

    with pytest.raises(ValueError):
        gc.run(half_then_fail)
    assert gc.run(_insert("after")) == "after"
    keys = {r[0] for r in db.reader().execute("SELECT key FROM settings")}
    assert keys == {"dup", "after"}
    db.close()


def test_a_failed_commit_fails_every_store_of_the_batch(tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite")
    gc = GroupCommit(db)
    db.close()  # the writer is gone: BEGIN fails
    with pytest.raises(sqlite3.Error):
        gc.run(_insert("x"))


def test_index_synchronous_normal_sets_only_the_writer(tmp_path: Path) -> None:
    from tests.support.edge import edge_config, running_edge

    with running_edge(edge_config(tmp_path, index_synchronous="normal")) as server:
        with server.db._lock:
            assert server.db._writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert server.db.reader().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(ValueError):
        Database(tmp_path / "x.sqlite").set_synchronous("OFF")
