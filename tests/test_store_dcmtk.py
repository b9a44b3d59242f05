"""C-ECHO and C-STORE against DCMTK's echoscu and storescu."""

from __future__ import annotations

from pathlib import Path

import pydicom

from edge.server import EdgeServer
from shared.synthetic import StudySpec, write_study
from tests.support.dcmtk import run


def test_echoscu_succeeds(edge: EdgeServer) -> None:
    r = run("echoscu", "-aet", "ECHOSCU", "-aec", "HPACS", "127.0.0.1", edge.ports[0])
    assert r.returncode == 0, r.stderr


def test_storescu_stores_bytes_exactly(edge: EdgeServer, tmp_path: Path) -> None:
    files = write_study(StudySpec(instances_per_series=5), tmp_path / "in")
    r = run("storescu", "-aet", "STORESCU", "-aec", "HPACS", "127.0.0.1", edge.ports[0], *files)
    assert r.returncode == 0, r.stderr
    rows = edge.db.reader().execute("SELECT sop_instance_uid, path FROM instances").fetchall()
    assert len(rows) == 5
    by_uid = {r["sop_instance_uid"]: edge.cache.path(r["path"]) for r in rows}
    for f in files:
        sent = pydicom.dcmread(f)
        stored_path = by_uid[sent.SOPInstanceUID]
        stored = pydicom.dcmread(stored_path)
        # dataset bytes after the file meta are exactly what was sent
        assert _dataset_bytes(stored_path) == _dataset_bytes(f)
        assert stored == sent


def _dataset_bytes(path: Path) -> bytes:
    from pydicom.filereader import read_preamble

    with open(path, "rb") as fh:
        read_preamble(fh, False)
        from pydicom.filereader import _read_file_meta_info

        _read_file_meta_info(fh)
        return fh.read()
