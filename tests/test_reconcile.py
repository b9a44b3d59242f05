"""Start-up reconciliation of the cache against the index (invariant 4, edge side)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from edge.cache import Cache
from edge.ingest import Ingestor
from edge.reconcile import reconcile
from shared.checksum import crc32c_file
from shared.index import Database
from shared.lifecycle import State, transition
from shared.rows import Origin
from shared.synthetic import StudySpec, write_study


@dataclass
class Site:
    db: Database
    cache: Cache
    ingestor: Ingestor
    files: list[Path]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    db = Database(tmp_path / "edge" / "index.sqlite")
    cache = Cache(tmp_path / "edge" / "cache")
    files = write_study(StudySpec(instances_per_series=4), tmp_path / "in")
    try:
        yield Site(db, cache, Ingestor(db, cache), files)
    finally:
        db.close()


def _rows(site: Site) -> dict[str, dict]:
    return {
        r["sop_instance_uid"]: dict(r)
        for r in site.db.reader().execute("SELECT * FROM instances").fetchall()
    }


def test_clean_cache_reconciles_to_nothing(site: Site) -> None:
    for f in site.files:
        site.ingestor.ingest_path(f, Origin("import"))
    rep = reconcile(site.db, site.cache)
    assert (rep.temp_removed, rep.reindexed, rep.unreadable, rep.missing_files) == (0, 0, [], [])


def test_temp_leftovers_are_removed(site: Site) -> None:
    for i in range(3):
        (site.cache.tmp / f"tmp{i}.dcm").write_bytes(b"partial receive")
    fh, _ = site.cache.new_temp()
    fh.close()
    rep = reconcile(site.db, site.cache)
    assert rep.temp_removed == 4
    assert list(site.cache.tmp.iterdir()) == []


def test_file_without_row_is_reindexed(site: Site) -> None:
    """A crash between the link and the commit leaves a file no row points to."""
    ds = pydicom.dcmread(site.files[0])
    rel, final = site.cache.path_for(ds.SOPInstanceUID)
    final.parent.mkdir(parents=True)
    final.write_bytes(site.files[0].read_bytes())
    rep = reconcile(site.db, site.cache)
    assert rep.reindexed == 1
    row = _rows(site)[ds.SOPInstanceUID]
    assert (row["path"], row["size"], row["crc32c"]) == (
        rel,
        final.stat().st_size,
        crc32c_file(final),
    )
    assert (row["state"], row["source"]) == ("cached", "reconcile")
    study = site.db.reader().execute("SELECT num_instances, num_series FROM studies").fetchone()
    assert tuple(study) == (1, 1)
    # a second start finds nothing more to do
    assert reconcile(site.db, site.cache).reindexed == 0


def test_unindexable_files_are_moved_aside(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    junk = site.cache.root / "ab" / "cd" / ("ab" + "0" * 62 + ".dcm")
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"not dicom at all")
    # valid DICOM, but not at its instance's path (someone copied it in by hand)
    stray = site.cache.root / "00" / "00" / ("0" * 64 + ".dcm")
    stray.parent.mkdir(parents=True)
    stray.write_bytes(site.files[1].read_bytes())
    rep = reconcile(site.db, site.cache)
    assert sorted(rep.unreadable) == sorted(
        [os.path.relpath(junk, site.cache.root), os.path.relpath(stray, site.cache.root)]
    )
    assert rep.reindexed == 0 and _rows(site) == {}
    assert not junk.exists() and not stray.exists()
    aside = site.cache.root / "lost+found"
    assert {p.name for p in aside.iterdir()} == {junk.name, stray.name}
    assert any("unindexable file" in r.getMessage() for r in caplog.records)
    # lost+found is not scanned again
    assert reconcile(site.db, site.cache).unreadable == []


def test_row_without_file_is_reported_loudly(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    results = [site.ingestor.ingest_path(f, Origin("import")) for f in site.files]
    gone = results[0]
    os.unlink(site.cache.path(gone.relpath))
    rep = reconcile(site.db, site.cache)
    assert rep.missing_files == [gone.header.sop_instance_uid]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("index rows without their file count=1" in r.getMessage() for r in errors)
    # the row stays: it is reported, never silently dropped
    assert gone.header.sop_instance_uid in _rows(site)


def test_evicted_rows_are_not_missing_and_stuck_recalls_are_reset(site: Site) -> None:
    results = [site.ingestor.ingest_path(f, Origin("import")) for f in site.files[:2]]
    ids = {r.header.sop_instance_uid: r for r in results}
    rows = _rows(site)
    evicted, recalling = (rows[u]["id"] for u in ids)
    with site.db.write() as conn:
        for row_id, path in ((evicted, results[0].relpath), (recalling, results[1].relpath)):
            assert transition(conn, row_id, State.CACHED, State.UPLOADING)
            assert transition(conn, row_id, State.UPLOADING, State.SYNCED)
            assert transition(conn, row_id, State.SYNCED, State.EVICTING)
            assert transition(conn, row_id, State.EVICTING, State.EVICTED)
            os.unlink(site.cache.path(path))
        assert transition(conn, recalling, State.EVICTED, State.RECALLING)
    rep = reconcile(site.db, site.cache)
    assert rep.missing_files == []
    assert rep.recalls_reset == 1
    states = {r["id"]: r["state"] for r in _rows(site).values()}
    assert states == {evicted: "evicted", recalling: "evicted"}


def test_a_file_at_an_evicted_rows_path_is_left_alone(site: Site) -> None:
    """Rows without a cache file (evicted, purged, lost) are not read into memory at start-up
    (at 10 M instances that took minutes); a file still found at such a row's path is looked
    up by its UID: neither re-indexed nor moved aside, and the row keeps its state."""
    result = site.ingestor.ingest_path(site.files[0], Origin("import"))
    row_id = _rows(site)[result.header.sop_instance_uid]["id"]
    with site.db.write() as conn:
        for a, b in ((State.CACHED, State.UPLOADING), (State.UPLOADING, State.SYNCED)):
            assert transition(conn, row_id, a, b)
        assert transition(conn, row_id, State.SYNCED, State.EVICTING)
        assert transition(conn, row_id, State.EVICTING, State.EVICTED)
    path = site.cache.path(result.relpath)
    before = path.read_bytes()
    rep = reconcile(site.db, site.cache)
    assert (rep.reindexed, rep.unreadable, rep.missing_files, rep.replace_leftovers) == (
        0,
        [],
        [],
        0,
    )
    assert path.read_bytes() == before
    row = _rows(site)[result.header.sop_instance_uid]
    assert (row["state"], row["path"]) == ("evicted", result.relpath)
    assert len(_rows(site)) == 1
