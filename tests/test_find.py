"""C-FIND against the edge with DCMTK findscu and pynetdicom as the SCU (real peers, real ports)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind as PatientRootFind,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as StudyRootFind,
)

from edge.ingest import Origin
from edge.server import EdgeServer
from shared.dicom import Header
from shared.errors import REFUSED_NOT_AUTHORIZED, SUCCESS
from shared.rows import Origin as RowOrigin
from shared.rows import index_instance
from shared.synthetic import StudySpec, write_study
from tests.support.dcmtk import run
from tests.support.edge import DCMTK_AETS, edge_config, running_edge

ALL = ["echo", "store", "find", "move", "get", "commit"]
NODES = [
    {"ae_title": aet, "host": "127.0.0.1", "port": 104, "permissions": ALL}
    for aet in [*DCMTK_AETS, "PYSCU"]
] + [{"ae_title": "NOFIND", "host": "127.0.0.1", "port": 104, "permissions": ["echo"]}]

SPECS = {
    "smith": StudySpec(patient_id="P1", patient_name="SMITH^JOHN", accession_number="A%1"),
    "smith2": StudySpec(
        patient_id="P1",
        patient_name="SMITH^JOHN",
        study_date="20240301",
        accession_number="A_1",
        modality="MR",
        series_count=2,
        instances_per_series=2,
    ),
    "jones": StudySpec(patient_id="P2", patient_name="JONES^ANNA", study_date="20231231"),
    "latin1": StudySpec(
        patient_id="P3", patient_name="Müller^Jürgen", specific_character_set="ISO_IR 100"
    ),
    "utf8": StudySpec(
        patient_id="P4", patient_name="山田^太郎", specific_character_set="ISO_IR 192"
    ),
}


@pytest.fixture(scope="module")
def loaded_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeServer, dict]]:
    """One edge with the studies of SPECS ingested; yields it and {label: [datasets]}."""
    tmp = tmp_path_factory.mktemp("find")
    with running_edge(edge_config(tmp, nodes=NODES)) as server:
        stored: dict[str, list[Dataset]] = {}
        for label, spec in SPECS.items():
            files = write_study(spec, tmp / "in" / label)
            for f in files:
                server.ingestor.ingest_path(f, Origin("import"))
            stored[label] = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        yield server, stored


def findscu(
    server: EdgeServer, tmp_path: Path, *keys: str, root: str = "-S", aet: str = "FINDSCU"
) -> list[Dataset]:
    out = tmp_path / "rsp"
    out.mkdir(exist_ok=True)
    args = [root, "-aet", aet, "-aec", "HPACS", "-X", "-od", out, "127.0.0.1", server.ports[0]]
    for k in keys:
        args += ["-k", k]
    r = run("findscu", *args)
    assert r.returncode == 0, r.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def study_uid(stored: dict, label: str) -> str:
    return str(stored[label][0].StudyInstanceUID)


def test_findscu_study_root_study_level_name_wildcard(loaded_edge, tmp_path) -> None:
    server, stored = loaded_edge
    rsp = findscu(
        server,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        "PatientName=SMITH*",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "RetrieveAETitle",
        "PatientAge",
    )
    got = {str(d.StudyInstanceUID): d for d in rsp}
    assert set(got) == {study_uid(stored, "smith"), study_uid(stored, "smith2")}
    d = got[study_uid(stored, "smith2")]
    assert d.QueryRetrieveLevel == "STUDY"
    assert d.ModalitiesInStudy == "MR"
    assert int(d.NumberOfStudyRelatedSeries) == 2
    assert int(d.NumberOfStudyRelatedInstances) == 4
    assert d.RetrieveAETitle == "HPACS"
    assert "PatientAge" in d and d.PatientAge in ("", None)
    assert "SpecificCharacterSet" not in d  # all-ASCII answers stay plain


@pytest.mark.parametrize(
    "keys,expected",
    [
        (["PatientID=P1"], {"smith", "smith2"}),
        (["PatientName=sm?th^john"], {"smith", "smith2"}),
        (["AccessionNumber=A%1"], {"smith"}),
        (["AccessionNumber=A_1"], {"smith2"}),
        (["AccessionNumber=A%*"], {"smith"}),
        (["AccessionNumber=%"], set()),
        (["StudyDate=20240101-20240131"], {"smith", "latin1", "utf8"}),
        (["StudyDate=-20231231"], {"jones"}),
        (["StudyDate=20240201-"], {"smith2"}),
        (["ModalitiesInStudy=MR"], {"smith2"}),
    ],
    ids=[
        "single",
        "question-mark",
        "percent",
        "underscore",
        "percent-star",
        "like-only",
        "date-closed",
        "date-open-start",
        "date-open-end",
        "modalities",
    ],
)
def test_findscu_matching(loaded_edge, tmp_path, keys: list[str], expected: set[str]) -> None:
    server, stored = loaded_edge
    rsp = findscu(server, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys)
    labels = {k for k in stored if study_uid(stored, k) in {str(d.StudyInstanceUID) for d in rsp}}
    assert labels == expected


def test_findscu_uid_list(loaded_edge, tmp_path) -> None:
    server, stored = loaded_edge
    uids = [study_uid(stored, "jones"), study_uid(stored, "utf8")]
    rsp = findscu(
        server, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID=" + "\\".join(uids)
    )
    assert sorted(str(d.StudyInstanceUID) for d in rsp) == sorted(uids)


def test_findscu_series_and_image_levels(loaded_edge, tmp_path) -> None:
    server, stored = loaded_edge
    uid = study_uid(stored, "smith2")
    series = findscu(
        server,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={uid}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
    )
    assert len(series) == 2
    assert {int(d.NumberOfSeriesRelatedInstances) for d in series} == {2}
    one = str(series[0].SeriesInstanceUID)
    (tmp_path / "img").mkdir()
    images = findscu(
        server,
        tmp_path / "img",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={uid}",
        f"SeriesInstanceUID={one}",
        "SOPInstanceUID",
        "InstanceNumber",
    )
    expected = {str(d.SOPInstanceUID) for d in stored["smith2"] if d.SeriesInstanceUID == one}
    assert {str(d.SOPInstanceUID) for d in images} == expected
    assert {int(d.InstanceNumber) for d in images} == {1, 2}


def test_findscu_patient_root_levels(loaded_edge, tmp_path) -> None:
    server, stored = loaded_edge
    (p_dir := tmp_path / "p").mkdir()
    patients = findscu(
        server,
        p_dir,
        "QueryRetrieveLevel=PATIENT",
        "PatientID=P1",
        "PatientName",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
        root="-P",
    )
    (p,) = patients
    assert p.PatientName == "SMITH^JOHN"
    assert int(p.NumberOfPatientRelatedStudies) == 2
    assert int(p.NumberOfPatientRelatedInstances) == 7
    studies = findscu(
        server, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=P2", "StudyInstanceUID", root="-P"
    )
    assert [str(d.StudyInstanceUID) for d in studies] == [study_uid(stored, "jones")]


def test_findscu_patient_root_series_and_image(loaded_edge, tmp_path) -> None:
    server, stored = loaded_edge
    uid = study_uid(stored, "jones")
    (s_dir := tmp_path / "s").mkdir()
    series = findscu(
        server,
        s_dir,
        "QueryRetrieveLevel=SERIES",
        "PatientID=P2",
        f"StudyInstanceUID={uid}",
        "SeriesInstanceUID",
        "Modality=CT",
        root="-P",
    )
    (one,) = series
    images = findscu(
        server,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        "PatientID=P2",
        f"StudyInstanceUID={uid}",
        f"SeriesInstanceUID={one.SeriesInstanceUID}",
        "SOPInstanceUID",
        "SOPClassUID",
        root="-P",
    )
    assert {str(d.SOPInstanceUID) for d in images} == {
        str(d.SOPInstanceUID) for d in stored["jones"]
    }
    assert {d.QueryRetrieveLevel for d in images} == {"IMAGE"}


def test_study_root_rejects_patient_level(loaded_edge, tmp_path) -> None:
    server, _ = loaded_edge
    with scu(server) as assoc:
        ds = Dataset()
        ds.QueryRetrieveLevel = "PATIENT"
        ds.PatientID = ""
        statuses = [s.Status for s, _ in assoc.send_c_find(ds, StudyRootFind)]
    assert statuses == [0xA900]


def test_invariant_3_evicted_instances_still_found(loaded_edge, tmp_path) -> None:
    server, stored = loaded_edge
    uid = study_uid(stored, "jones")
    with server.db.write() as conn:
        conn.execute(
            "UPDATE instances SET state = 'evicted' WHERE study_id = "
            "(SELECT id FROM studies WHERE study_uid = ?)",
            (uid,),
        )
    rsp = findscu(
        server,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={uid}",
        "SOPInstanceUID",
        "InstanceAvailability",
    )
    assert {str(d.SOPInstanceUID) for d in rsp} == {str(d.SOPInstanceUID) for d in stored["jones"]}
    assert {d.InstanceAvailability for d in rsp} == {"NEARLINE"}


class scu:
    """A pynetdicom SCU association to the edge for both FIND models."""

    def __init__(self, server: EdgeServer, aet: str = "PYSCU") -> None:
        self.ae = AE(ae_title=aet)
        self.ae.add_requested_context(StudyRootFind)
        self.ae.add_requested_context(PatientRootFind)
        self.server = server

    def __enter__(self):
        self.assoc = self.ae.associate("127.0.0.1", self.server.ports[0], ae_title="HPACS")
        assert self.assoc.is_established
        return self.assoc

    def __exit__(self, *exc: object) -> None:
        self.assoc.release()
        self.ae.shutdown()


@pytest.mark.parametrize(
    "query_charset,name,label",
    [
        ("ISO_IR 192", "MÜLLER*", "latin1"),
        ("ISO_IR 100", "müller^jürgen", "latin1"),
        ("ISO_IR 192", "山田*", "utf8"),
    ],
)
def test_non_ascii_patient_name_round_trip(loaded_edge, query_charset, name, label) -> None:
    server, stored = loaded_edge
    ds = Dataset()
    ds.SpecificCharacterSet = query_charset
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = name
    ds.StudyInstanceUID = ""
    with scu(server) as assoc:
        results = list(assoc.send_c_find(ds, StudyRootFind))
    identifiers = [i for s, i in results if s.Status == 0xFF00]
    assert results[-1][0].Status == SUCCESS
    (found,) = identifiers
    assert found.SpecificCharacterSet == "ISO_IR 192"
    assert str(found.PatientName) == str(stored[label][0].PatientName)
    assert found.StudyInstanceUID == stored[label][0].StudyInstanceUID


def test_findscu_non_ascii_name(loaded_edge, tmp_path) -> None:
    server, _ = loaded_edge
    rsp = findscu(
        server,
        tmp_path,
        "SpecificCharacterSet=ISO_IR 192",
        "QueryRetrieveLevel=STUDY",
        "PatientName=Mü*",
        "StudyInstanceUID",
    )
    (d,) = rsp
    assert str(d.PatientName) == "Müller^Jürgen"


def test_node_without_find_permission_is_refused(loaded_edge) -> None:
    server, _ = loaded_edge
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    with scu(server, aet="NOFIND") as assoc:
        statuses = [s.Status for s, _ in assoc.send_c_find(ds, StudyRootFind)]
    assert statuses == [REFUSED_NOT_AUTHORIZED]


def _bulk_studies(server: EdgeServer, n: int, patient_id: str) -> None:
    """n one-instance studies inserted as index rows (fast; no files needed for C-FIND)."""
    root = "1.2.826.0.1.3680043.10.1255.7"
    with server.db.write() as conn:
        for i in range(n):
            h = Header(
                sop_instance_uid=f"{root}.{patient_id[1:]}.{i}.1.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_uid=f"{root}.{patient_id[1:]}.{i}",
                series_uid=f"{root}.{patient_id[1:]}.{i}.1",
                transfer_syntax="1.2.840.10008.1.2.1",
                patient_id=patient_id,
            )
            index_instance(conn, replace(h), f"x/{i}", 1, "0", RowOrigin("import"), 1.0)


def test_cancelled_find_stops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """DCMTK findscu sends C-CANCEL after the first response; the edge stops there.

    findscu is the peer here because pynetdicom's own SCU reactor reads before it writes: while
    the edge streams responses, its C-CANCEL can stay queued until the stream ends.
    """
    n = 5000
    with running_edge(edge_config(tmp_path, nodes=NODES, find_max_results=n)) as server:
        _bulk_studies(server, n, "P900")
        with caplog.at_level(logging.INFO, logger="hpacs.edge.find"):
            r = run(
                "findscu", "-S", "-aet", "FINDSCU", "-aec", "HPACS", "--cancel", "1",
                "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=P900",
                "-k", "StudyInstanceUID", "127.0.0.1", server.ports[0],
            )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (line,) = [m.getMessage() for m in caplog.records if "find cancelled" in m.getMessage()]
    assert int(line.rsplit("sent=", 1)[1]) < n


def test_result_cap_truncates_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with running_edge(edge_config(tmp_path, nodes=NODES, find_max_results=3)) as server:
        _bulk_studies(server, 5, "P901")
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientID = "P901"
        with caplog.at_level(logging.INFO, logger="hpacs.edge.find"), scu(server) as assoc:
            statuses = [s.Status for s, _ in assoc.send_c_find(ds, StudyRootFind)]
    assert statuses == [0xFF00] * 3 + [SUCCESS]
    (warn,) = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert "max_results=3" in warn.getMessage() and "P901" not in caplog.text


def test_no_phi_in_info_logs(loaded_edge, caplog: pytest.LogCaptureFixture) -> None:
    server, _ = loaded_edge
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "JONES*"
    ds.PatientID = ""
    with caplog.at_level(logging.INFO), scu(server) as assoc:
        statuses = [s.Status for s, _ in assoc.send_c_find(ds, StudyRootFind)]
    assert statuses == [0xFF00, SUCCESS]
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("find calling_ae=PYSCU" in m for m in info)
    assert not [m for m in info if "JONES" in m or "P2" in m.split()]
