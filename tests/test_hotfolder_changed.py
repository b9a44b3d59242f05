"""Hot folder files written to while, or after, they are ingested are never passed off as done."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from edge.hotfolder import HotFolder
from shared.checksum import crc32c_file
from shared.dicom import Header
from shared.errors import InvalidDataset
from shared.rows import Origin
from shared.synthetic import StudySpec, write_study
from tests.support.net import wait_for
from tests.support.routing import EdgeParts, edge_parts, routing_config

pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[EdgeParts]:
    with edge_parts(routing_config(tmp_path, [], [])) as p:
        yield p


def test_file_rewritten_during_ingest_is_not_moved_to_done(
    tmp_path: Path, parts: EdgeParts
) -> None:
    """The writer rewrites the file (other bytes, same instance) while its first version is
    being indexed: the first version is stored, and the file is looked at again once it
    settles, here a conflict under policy keep, so it ends in failed/ with the reason."""
    first = write_study(StudySpec(instances_per_series=1), tmp_path / "src")[0]
    root = tmp_path / "import"
    root.mkdir()
    dropped = root / "img.dcm"
    dropped.write_bytes(first.read_bytes())
    second = pydicom.dcmread(first)
    second.SeriesDescription = "second version"
    rewritten: list[bool] = []

    def rewrite_once(_conn: sqlite3.Connection, _h: Header, _o: Origin) -> None:
        if not rewritten:
            second.save_as(dropped, enforce_file_format=True)
            rewritten.append(True)

    parts.ingestor.on_indexed.append(rewrite_once)
    hf = HotFolder(root, parts.ingestor, settle_s=0.2)
    hf.start()
    try:
        wait_for(lambda: (root / "failed" / "img.dcm.reason").exists(), 20, "second look")
    finally:
        hf.stop()
    assert not (root / "done" / "img.dcm").exists()
    reason = (root / "failed" / "img.dcm.reason").read_text()
    assert reason.startswith("DuplicateConflict:") and "different bytes" in reason
    (row,) = parts.db.reader().execute("SELECT path, crc32c FROM instances").fetchall()
    assert row["crc32c"] == crc32c_file(first)  # the version that was stored, intact
    assert hf.counts == {"stored": 1, "duplicate": 0, "failed": 1}


def test_file_touched_after_ingest_is_taken_again_as_a_duplicate(
    tmp_path: Path, parts: EdgeParts
) -> None:
    src = write_study(StudySpec(instances_per_series=1), tmp_path / "src")[0]
    root = tmp_path / "import"
    root.mkdir()
    dropped = root / "img.dcm"
    dropped.write_bytes(src.read_bytes())
    touched: list[bool] = []

    def touch_once(_conn: sqlite3.Connection, _h: Header, _o: Origin) -> None:
        if not touched:
            dropped.write_bytes(src.read_bytes())  # same bytes, new mtime
            touched.append(True)

    parts.ingestor.on_indexed.append(touch_once)
    hf = HotFolder(root, parts.ingestor, settle_s=0.2)
    hf.start()
    try:
        wait_for(lambda: (root / "done" / "img.dcm").exists(), 20, "done after a second look")
    finally:
        hf.stop()
    assert hf.counts == {"stored": 1, "duplicate": 1, "failed": 0}


def test_ingest_path_refuses_a_source_that_moved_on_from_its_settled_signature(
    tmp_path: Path, parts: EdgeParts
) -> None:
    src = write_study(StudySpec(instances_per_series=1), tmp_path / "src")[0]
    st = src.stat()
    with pytest.raises(InvalidDataset, match="changed while it was read"):
        parts.ingestor.ingest_path(
            src, Origin("hotfolder"), expect=(st.st_size - 1, st.st_mtime_ns)
        )
    assert parts.db.reader().execute("SELECT count(*) FROM instances").fetchone()[0] == 0
    assert list(parts.cache.tmp.iterdir()) == []
    result = parts.ingestor.ingest_path(
        src, Origin("hotfolder"), expect=(st.st_size, st.st_mtime_ns)
    )
    assert result.outcome.value == "stored"
