"""C-GET: DCMTK getscu and pynetdicom take the storage SCP role on the same association."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from edge.server import EdgeServer
from shared.errors import PENDING, REFUSED_NOT_AUTHORIZED, SUCCESS
from tests.support.dcmtk import run
from tests.support.retrieve import (
    assert_received_identical,
    get,
    load,
    load_study,
    register,
    study_identifier,
)


def test_getscu_bit_identical(edge: EdgeServer, tmp_path: Path) -> None:
    study_uid, files = load_study(edge, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    r = run(
        "getscu", "-S", "-aet", "GETSCU", "-aec", "HPACS", "-od", out,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
        "127.0.0.1", edge.ports[0],
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert_received_identical(out, files)


def test_get_counters_and_last_access(edge: EdgeServer, tmp_path: Path) -> None:
    study_uid, _ = load_study(edge, tmp_path, n=3)
    with edge.db.write() as conn:
        conn.execute("UPDATE studies SET last_access = 1")
    rsps, rec = get(edge, study_identifier(study_uid), [str(CTImageStorage)])
    pending = [st for s, _, st in rsps if s == PENDING]
    assert [p.NumberOfRemainingSuboperations for p in pending] == [2, 1, 0]
    final = rsps[-1][2]
    assert int(final.Status) == SUCCESS
    assert final.NumberOfCompletedSuboperations == 3
    assert len(rec.received) == 3
    assert edge.db.reader().execute("SELECT last_access FROM studies").fetchone()[0] > 1


def test_get_converts_for_an_uncompressed_only_requestor(edge: EdgeServer) -> None:
    path = Path(get_testdata_file("JPEG2000.dcm"))
    load(edge, [path])
    ds = pydicom.dcmread(path)
    ident = study_identifier(str(ds.StudyInstanceUID), level="IMAGE")
    ident.SOPInstanceUID = ds.SOPInstanceUID
    rsps, rec = get(edge, ident, [str(ds.SOPClassUID)], [str(ExplicitVRLittleEndian)])
    assert rsps[-1][0] == SUCCESS
    ts, _ = rec.received[str(ds.SOPInstanceUID)]
    assert ts == ExplicitVRLittleEndian


def test_get_without_permission_refused(edge: EdgeServer, tmp_path: Path) -> None:
    study_uid, _ = load_study(edge, tmp_path, n=1)
    register(edge, "NOGET", 104, ["echo", "find"])
    rsps, rec = get(edge, study_identifier(study_uid), [str(CTImageStorage)], calling_ae="NOGET")
    assert rsps[-1][0] == REFUSED_NOT_AUTHORIZED
    assert rec.received == {}
