"""Interleavings of two stores of one SOP Instance UID, made deterministic by wrapping our own
link step (the second store runs right after the first one's link, before its index commit)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

import edge.ingest
from edge.cache import Cache
from edge.ingest import Ingestor, Outcome
from edge.reconcile import reconcile
from shared.checksum import crc32c_file
from shared.errors import DuplicateConflict
from shared.index import Database
from shared.rows import Origin
from shared.synthetic import StudySpec, write_study


@pytest.fixture
def ingestor(tmp_path: Path) -> Iterator[Ingestor]:
    db = Database(tmp_path / "index.sqlite")
    try:
        yield Ingestor(db, Cache(tmp_path / "cache"))
    finally:
        db.close()


def _interleave(monkeypatch: pytest.MonkeyPatch, second: object) -> list[object]:
    """Run `second()` once, right after the first successful link."""
    real = edge.ingest.durable_link
    out: list[object] = []

    def link_then_race(src: Path, dst: Path) -> bool:
        linked = real(src, dst)
        if linked and not out:
            out.append(None)
            try:
                out[0] = second()  # type: ignore[operator]
            except Exception as exc:
                out[0] = exc
        return linked

    monkeypatch.setattr(edge.ingest, "durable_link", link_then_race)
    return out


def test_concurrent_identical_stores_keep_the_file(
    ingestor: Ingestor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (f,) = write_study(StudySpec(instances_per_series=1), tmp_path / "in")
    other = _interleave(monkeypatch, lambda: ingestor.ingest_path(f, Origin("import")))
    first = ingestor.ingest_path(f, Origin("import"))
    assert other[0].outcome is Outcome.DUPLICATE  # type: ignore[union-attr]
    assert first.outcome is Outcome.DUPLICATE
    rows = ingestor.db.reader().execute("SELECT path, crc32c FROM instances").fetchall()
    assert len(rows) == 1
    stored = ingestor.cache.path(rows[0]["path"])
    assert stored.exists() and crc32c_file(stored) == rows[0]["crc32c"]
    assert reconcile(ingestor.db, ingestor.cache).missing_files == []


def test_concurrent_different_stores_keep_exactly_one(
    ingestor: Ingestor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (f,) = write_study(StudySpec(instances_per_series=1), tmp_path / "in")
    ds = pydicom.dcmread(f)
    ds.SeriesDescription = "other bytes"
    g = tmp_path / "in" / "other.dcm"
    ds.save_as(g, enforce_file_format=True)
    other = _interleave(monkeypatch, lambda: ingestor.ingest_path(g, Origin("import")))
    first = ingestor.ingest_path(f, Origin("import"))
    assert isinstance(other[0], DuplicateConflict)
    assert first.outcome is Outcome.STORED
    (row,) = ingestor.db.reader().execute("SELECT path, crc32c FROM instances").fetchall()
    assert crc32c_file(ingestor.cache.path(row["path"])) == row["crc32c"] == first.crc32c


@pytest.mark.parametrize("state", ["evicting", "recalling"])
def test_replace_waits_for_eviction_or_recall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    from shared.errors import InstanceBusy
    from shared.lifecycle import State, transition

    db = Database(tmp_path / "index.sqlite")
    try:
        ingestor = Ingestor(db, Cache(tmp_path / "cache"), duplicates="replace")
        (f,) = write_study(StudySpec(instances_per_series=1), tmp_path / "in")
        first = ingestor.ingest_path(f, Origin("import"))
        path = ingestor.cache.path(first.relpath)
        row_id = db.reader().execute("SELECT id FROM instances").fetchone()[0]
        steps = [State.UPLOADING, State.SYNCED, State.EVICTING]
        if state == "recalling":
            steps += [State.EVICTED, State.RECALLING]
        with db.write() as conn:
            src = State.CACHED
            for dst in steps:
                assert transition(conn, row_id, src, dst)
                src = dst
        if state == "recalling":  # the recall is writing the file back
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f.read_bytes())
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = "new bytes"
        g = tmp_path / "in" / "new.dcm"
        ds.save_as(g, enforce_file_format=True)
        with pytest.raises(InstanceBusy):
            ingestor.ingest_path(g, Origin("import"))
        assert crc32c_file(path) == first.crc32c
        assert db.reader().execute("SELECT state FROM instances").fetchone()[0] == state
    finally:
        db.close()
