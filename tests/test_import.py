"""`hpacs-edge import`: run as the admin runs it, on a folder of good, duplicate and bad files."""

from __future__ import annotations

import io
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from edge.importer import ImportSummary, iter_files, run_import
from shared.synthetic import StudySpec, write_study
from tests.support.edge import cli
from tests.support.routing import edge_parts, routing_config


def hpacs_edge(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(config, *args, timeout=120)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    p = tmp_path / "hpacs.toml"
    p.write_text(f'[edge]\ndata_dir = "{tmp_path / "edge"}"\nmin_free_bytes = 0\n')
    return p


def count_instances(tmp_path: Path) -> int:
    db = tmp_path / "edge" / "index.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])


def test_import_good_duplicate_and_bad_files(tmp_path: Path, config: Path) -> None:
    media = tmp_path / "media"
    files = write_study(StudySpec(instances_per_series=3), media / "DICOM" / "ST1")
    for f in files:  # media layout: no .dcm suffix
        f.rename(f.with_suffix(""))
    first = files[0].with_suffix("")
    shutil.copy(first, media / "copy-of-first")  # duplicate within the run
    (media / "README.txt").write_text("not DICOM")
    (media / "DICOMDIR").write_bytes(b"skipped")

    dry = hpacs_edge(config, "import", "--dry-run", str(media))
    assert dry.returncode == 1, dry.stderr
    assert "would store 3, duplicate 1, rejected 1 (5 files" in dry.stdout
    assert count_instances(tmp_path) == 0

    run = hpacs_edge(config, "import", str(media))
    assert run.returncode == 1, run.stderr
    assert "stored 3, duplicate 1, rejected 1 (5 files" in run.stdout
    assert f"  {media / 'README.txt'}: InvalidDataset:" in run.stdout
    assert "MB/s" in run.stderr and "ETA" in run.stderr and "[5/5]" in run.stderr
    assert count_instances(tmp_path) == 3


def test_missing_path_is_rejected_and_reimport_is_all_duplicates(tmp_path: Path) -> None:
    with edge_parts(routing_config(tmp_path, [], [])) as parts:
        files = write_study(StudySpec(instances_per_series=2), tmp_path / "in")
        out = io.StringIO()
        first = run_import([tmp_path / "in", tmp_path / "nope.dcm"], parts.ingestor, progress=out)
        assert (first.stored, first.duplicate) == (2, 0)
        assert first.rejected == [
            (tmp_path / "nope.dcm", "unreadable: not a regular file or missing")
        ]
        again = run_import(files, parts.ingestor, progress=out)
        assert (again.stored, again.duplicate, again.rejected) == (0, 2, [])
        assert out.getvalue().count("[3/3] 100%") == 1


def test_full_cache_stops_the_import_with_the_reason(tmp_path: Path) -> None:
    with edge_parts(routing_config(tmp_path, [], [])) as parts:
        write_study(StudySpec(instances_per_series=3), tmp_path / "in")
        parts.ingestor.min_free_bytes = 1 << 62
        s = run_import([tmp_path / "in"], parts.ingestor, progress=io.StringIO())
        assert (s.stored, s.rejected, s.ok) == (0, [], False)
        assert "OutOfResources" in s.stopped and s.render(False).endswith(s.stopped)


def test_iter_files_is_recursive_sorted_and_skips_dicomdir(tmp_path: Path) -> None:
    for rel in ["b/2", "b/1", "a/DICOMDIR", "a/x", "top"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    got = [p.relative_to(tmp_path).as_posix() for p in iter_files([tmp_path])]
    assert got == ["top", "a/x", "b/1", "b/2"]


def test_summary_lists_reasons() -> None:
    s = ImportSummary(stored=1, rejected=[(Path("x"), "InvalidDataset: nope")], files=2)
    assert s.render(False).splitlines() == [
        "stored 1, duplicate 0, rejected 1 (2 files, 0.0 MB in 0.0 s)",
        "rejected:",
        "  x: InvalidDataset: nope",
    ]
