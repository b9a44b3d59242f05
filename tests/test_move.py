"""C-MOVE: DCMTK movescu and pynetdicom against the edge, DCMTK storescp and pynetdicom peers."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEGBaseline8Bit, MRImageStorage

from edge.server import EdgeServer
from shared.errors import (
    IDENTIFIER_DOES_NOT_MATCH,
    MOVE_DESTINATION_UNKNOWN,
    PENDING,
    SUBOPS_WARNING,
    SUCCESS,
)
from shared.synthetic import StudySpec, write_study
from tests.support.dcmtk import movescu
from tests.support.retrieve import (
    assert_received_identical,
    connection_recorder,
    dcmtk_destination,
    load,
    load_study,
    move,
    pynetdicom_destination,
    quick_study,
    register,
    study_identifier,
    uid_list,
)


def test_movescu_to_storescp_bit_identical(edge: EdgeServer, tmp_path: Path) -> None:
    study_uid, files = load_study(edge, tmp_path)
    out = tmp_path / "out"
    with dcmtk_destination(edge, out):
        r = movescu(edge.ports[0], "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}")
    assert r.returncode == 0, r.stderr
    assert_received_identical(out, files)


def test_move_updates_last_access(edge: EdgeServer, tmp_path: Path) -> None:
    study_uid, _ = load_study(edge, tmp_path, n=2)
    with edge.db.write() as conn:
        conn.execute("UPDATE studies SET last_access = 1")
        conn.execute("UPDATE instances SET last_access = 1")
    with pynetdicom_destination() as (port, _rec):
        register(edge, "PYSCP", port)
        move(edge, study_identifier(study_uid), "PYSCP")
    db = edge.db.reader()
    assert db.execute("SELECT min(last_access) FROM studies").fetchone()[0] > 1
    assert db.execute("SELECT min(last_access) FROM instances").fetchone()[0] > 1


def test_unknown_destination_a801_and_no_connection(edge: EdgeServer, tmp_path: Path) -> None:
    study_uid, _ = load_study(edge, tmp_path, n=1)
    with connection_recorder() as (_port, seen):
        rsps = move(edge, study_identifier(study_uid), "NOTREGISTERED")
    assert [s for s, _, _ in rsps] == [MOVE_DESTINATION_UNKNOWN]
    assert seen == []


def test_requestor_without_move_permission_refused(edge: EdgeServer, tmp_path: Path) -> None:
    study_uid, _ = load_study(edge, tmp_path, n=1)
    register(edge, "NOMOVE", 104, ["echo", "find"])
    with connection_recorder() as (port, seen):
        register(edge, "RECORDER", port)
        rsps = move(edge, study_identifier(study_uid), "RECORDER", calling_ae="NOMOVE")
    status = rsps[-1][0]
    assert status & 0xF000 in (0xA000, 0xC000) or status == 0x0124, hex(status)
    assert seen == []


def test_thousand_instances_over_one_association(edge: EdgeServer, tmp_path: Path) -> None:
    files = quick_study(tmp_path / "in", 1000)
    load(edge, files)
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    out = tmp_path / "out"
    with dcmtk_destination(edge, out) as peer:
        r = movescu(
            edge.ports[0], "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}", timeout=120
        )
    assert r.returncode == 0, r.stderr
    assert len(list(out.iterdir())) == 1000
    # counted from storescp's "Association Acknowledged" lines
    assert peer.associations == 1, peer.log[-2000:]


def test_pending_responses_carry_the_counters(edge: EdgeServer, tmp_path: Path) -> None:
    study_uid, _ = load_study(edge, tmp_path, n=5)
    with pynetdicom_destination() as (port, rec):
        register(edge, "PYSCP", port)
        rsps = move(edge, study_identifier(study_uid), "PYSCP")
    pending = [st for s, _, st in rsps if s == PENDING]
    assert [p.NumberOfRemainingSuboperations for p in pending] == [4, 3, 2, 1, 0]
    assert [p.NumberOfCompletedSuboperations for p in pending] == [1, 2, 3, 4, 5]
    final = rsps[-1][2]
    assert int(final.Status) == SUCCESS
    assert final.NumberOfCompletedSuboperations == 5
    assert final.NumberOfFailedSuboperations == 0
    assert rec.associations == 1


def test_no_conversion_fails_one_and_move_continues(
    edge: EdgeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CT only accepted as JPEG Baseline (we never encode lossy): that sub-operation fails."""
    study_uid, ct_files = load_study(edge, tmp_path, n=2)
    mr = write_study(
        StudySpec(instances_per_series=1, study_uid=study_uid, sop_class_uid=str(MRImageStorage)),
        tmp_path / "mr",
    )
    load(edge, mr)
    syntaxes = {
        str(pydicom.dcmread(ct_files[0]).SOPClassUID): [str(JPEGBaseline8Bit)],
        str(MRImageStorage): ["1.2.840.10008.1.2.1"],
    }
    with (
        caplog.at_level(logging.WARNING, logger="hpacs.edge"),
        pynetdicom_destination(syntaxes) as (port, rec),
    ):
        register(edge, "PYSCP", port)
        rsps = move(edge, study_identifier(study_uid), "PYSCP")
    final_status, ident, final = rsps[-1]
    assert final_status == SUBOPS_WARNING
    assert final.NumberOfFailedSuboperations == 2
    assert final.NumberOfCompletedSuboperations == 1
    ct_uids = {str(pydicom.dcmread(f).SOPInstanceUID) for f in ct_files}
    assert ident is not None and set(uid_list(ident.FailedSOPInstanceUIDList)) == ct_uids
    assert set(rec.received) == {str(pydicom.dcmread(mr[0]).SOPInstanceUID)}
    assert "stored as Explicit VR Little Endian" in caplog.text
    assert "no presentation context for this SOP class" in caplog.text


def test_evicted_instance_without_recall_is_a_failed_suboperation(
    edge: EdgeServer, tmp_path: Path
) -> None:
    study_uid, files = load_study(edge, tmp_path, n=3)
    evicted = str(pydicom.dcmread(files[1]).SOPInstanceUID)
    with edge.db.write() as conn:
        conn.execute(
            "UPDATE instances SET state = 'evicted' WHERE sop_instance_uid = ?", (evicted,)
        )
    with pynetdicom_destination() as (port, rec):
        register(edge, "PYSCP", port)
        rsps = move(edge, study_identifier(study_uid), "PYSCP")
    _, ident, final = rsps[-1]
    assert final.NumberOfFailedSuboperations == 1
    assert final.NumberOfCompletedSuboperations == 2
    assert ident is not None and uid_list(ident.FailedSOPInstanceUIDList) == [evicted]
    assert evicted not in rec.received


def test_series_and_image_level_select_by_uid_lists(edge: EdgeServer, tmp_path: Path) -> None:
    _, files = load_study(edge, tmp_path, n=4)
    dss = [pydicom.dcmread(f) for f in files]
    with pynetdicom_destination() as (port, rec):
        register(edge, "PYSCP", port)
        ident = study_identifier(str(dss[0].StudyInstanceUID), level="IMAGE")
        ident.SeriesInstanceUID = dss[0].SeriesInstanceUID
        ident.SOPInstanceUID = [dss[0].SOPInstanceUID, dss[2].SOPInstanceUID]
        rsps = move(edge, ident, "PYSCP")
    assert rsps[-1][0] == SUCCESS
    assert set(rec.received) == {str(dss[0].SOPInstanceUID), str(dss[2].SOPInstanceUID)}


def test_patient_root_move_by_patient_id(edge: EdgeServer, tmp_path: Path) -> None:
    _, files = load_study(edge, tmp_path, n=2, patient_id="PMOVE1")
    load_study(edge, tmp_path / "other", n=1, patient_id="POTHER")
    out = tmp_path / "out"
    with dcmtk_destination(edge, out):
        r = movescu(edge.ports[0], "QueryRetrieveLevel=PATIENT", "PatientID=PMOVE1", model="-P")
    assert r.returncode == 0, r.stderr
    got = {str(pydicom.dcmread(p).SOPInstanceUID) for p in out.iterdir()}
    assert got == {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}


def test_study_root_move_at_patient_level_is_refused(edge: EdgeServer, tmp_path: Path) -> None:
    """PS3.4 C.6.2: the Study Root model has no PATIENT level; conformance 5.4 answers a level
    the SOP class does not have with 0xA900 (as C-FIND does), and nothing is sent."""
    load_study(edge, tmp_path, n=1, patient_id="PSTUDYROOT")
    ident = pydicom.Dataset()
    ident.QueryRetrieveLevel = "PATIENT"
    ident.PatientID = "PSTUDYROOT"
    with pynetdicom_destination() as (port, rec):
        register(edge, "PYSCP", port)
        rsps = move(edge, ident, "PYSCP")
    assert [status for status, _, _ in rsps] == [IDENTIFIER_DOES_NOT_MATCH]
    assert not rec.received
