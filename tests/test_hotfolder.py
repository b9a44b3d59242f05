"""The hot folder: real files in tmp_path, the real ingest path, watchdog's real observer."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from edge.hotfolder import HotFolder, is_candidate
from shared.synthetic import StudySpec, write_study
from tests.support.net import wait_for
from tests.support.routing import EdgeParts, edge_parts, routing_config

# watchdog re-adds inotify watches for directories recreated under done/; harmless here
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[EdgeParts]:
    with edge_parts(routing_config(tmp_path, [], [])) as p:
        yield p


@contextmanager
def hot_folder(root: Path, parts: EdgeParts, **kw: float | bool) -> Iterator[HotFolder]:
    kw.setdefault("settle_s", 0.2)
    hf = HotFolder(root, parts.ingestor, **kw)  # type: ignore[arg-type]
    hf.start()
    try:
        yield hf
    finally:
        hf.stop()


def stored(parts: EdgeParts) -> dict[str, Path]:
    rows = parts.db.reader().execute("SELECT sop_instance_uid, path FROM instances").fetchall()
    return {r[0]: parts.cache.path(r[1]) for r in rows}


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_file_appended_slowly_is_ingested_once_and_complete(
    tmp_path: Path, parts: EdgeParts
) -> None:
    src = write_study(StudySpec(instances_per_series=1, rows=128, columns=128), tmp_path / "s")[0]
    data = src.read_bytes()
    root = tmp_path / "import"
    # settle 2 s against a write every ~0.05 s: a loaded machine can stall this process for a
    # fraction of a second (0.6 s was too close); the writer checks it never paused that long
    settle_s = 2.0
    with hot_folder(root, parts, settle_s=settle_s) as hf:
        dropped = root / "slow.dcm"
        step = len(data) // 20 + 1
        longest_pause, last = 0.0, time.monotonic()
        with dropped.open("wb") as fh:  # a slow writer: 20 chunks over about a second
            for i in range(0, len(data), step):
                fh.write(data[i : i + step])
                fh.flush()
                now = time.monotonic()
                longest_pause, last = max(longest_pause, now - last), now
                time.sleep(0.05)
        assert longest_pause < settle_s, f"the writer itself stalled {longest_pause:.2f} s"
        wait_for(lambda: (root / "done" / "slow.dcm").exists(), 15, "file done")
        assert hf.counts == {"stored": 1, "duplicate": 0, "failed": 0}
    got = stored(parts)
    assert len(got) == 1
    assert next(iter(got.values())).read_bytes() == data
    assert (root / "done" / "slow.dcm").read_bytes() == data


def test_dicomdir_layout_present_before_start(tmp_path: Path, parts: EdgeParts) -> None:
    root = tmp_path / "import"
    media = root / "CDROM" / "DICOM"
    srcs = write_study(StudySpec(series_count=2, instances_per_series=2), tmp_path / "s")
    uids = set()
    for i, src in enumerate(srcs):
        dest = media / f"ST0000{i // 2}" / f"IM{i:04d}"  # no .dcm suffix
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
        uids.add(str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID))
    (root / "CDROM" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM not an image")
    with hot_folder(root, parts) as hf:
        wait_for(lambda: len(files_under(root / "done")) == 5, 15, "all done")
        assert hf.counts["stored"] == 4
    assert set(stored(parts)) == uids
    assert (root / "done" / "CDROM" / "DICOMDIR").exists()
    assert files_under(root / "failed") == []


def test_bad_file_goes_to_failed_with_a_reason(tmp_path: Path, parts: EdgeParts) -> None:
    root = tmp_path / "import"
    with hot_folder(root, parts):
        (root / "notes.txt").write_text("not DICOM")
        good = write_study(StudySpec(instances_per_series=1), tmp_path / "s")[0]
        shutil.copy(good, root / "good.dcm")
        wait_for(lambda: (root / "failed" / "notes.txt.reason").exists(), 15, "reason")
        wait_for(lambda: (root / "done" / "good.dcm").exists(), 15, "good done")
    reason = (root / "failed" / "notes.txt.reason").read_text()
    assert reason.startswith("InvalidDataset:")
    assert (root / "failed" / "notes.txt").read_text() == "not DICOM"
    assert len(stored(parts)) == 1


def test_rescan_finds_files_without_events(tmp_path: Path, parts: EdgeParts) -> None:
    root = tmp_path / "import"
    with hot_folder(root, parts, watch=False, rescan_s=0.2):
        for f in write_study(StudySpec(instances_per_series=3), tmp_path / "s"):
            shutil.copy(f, root / f.name)
        wait_for(lambda: len(stored(parts)) == 3, 15, "rescan ingested")


def test_same_file_dropped_twice_is_one_instance(tmp_path: Path, parts: EdgeParts) -> None:
    root = tmp_path / "import"
    src = write_study(StudySpec(instances_per_series=1), tmp_path / "s")[0]
    with hot_folder(root, parts) as hf:
        shutil.copy(src, root / "a.dcm")
        wait_for(lambda: (root / "done" / "a.dcm").exists(), 15, "first")
        shutil.copy(src, root / "a.dcm")
        wait_for(lambda: (root / "done" / "a.dcm.1").exists(), 15, "second")
        assert hf.counts == {"stored": 1, "duplicate": 1, "failed": 0}
    assert len(stored(parts)) == 1


def test_full_cache_defers_the_file_instead_of_failing_it(tmp_path: Path, parts: EdgeParts) -> None:
    root = tmp_path / "import"
    parts.ingestor.min_free_bytes = 1 << 62  # the cache "is full"
    src = write_study(StudySpec(instances_per_series=1), tmp_path / "s")[0]
    with hot_folder(root, parts, retry_s=0.2) as hf:
        shutil.copy(src, root / "a.dcm")
        wait_for(lambda: hf.deferred >= 2, 15, "deferred twice")
        assert (root / "a.dcm").exists() and files_under(root / "failed") == []
        parts.ingestor.min_free_bytes = 0  # space freed
        wait_for(lambda: (root / "done" / "a.dcm").exists(), 15, "done")
    assert len(stored(parts)) == 1


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("a.dcm", True),
        ("DICOM/ST0/IM0001", True),
        ("done/a.dcm", False),
        ("failed/a.dcm", False),
        (".hidden", False),
        ("sub/.tmpfile", False),
        ("upload.dcm.part", False),
        ("x.TMP", False),
        ("DICOMDIR", True),  # taken, but moved to done/ without ingest
    ],
)
def test_is_candidate(rel: str, expected: bool) -> None:
    assert is_candidate(Path(rel)) is expected
