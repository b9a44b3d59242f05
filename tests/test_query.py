"""edge.query, table-driven: identifier -> SQL -> which rows of a real SQLite index match."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from edge import query
from shared.errors import BadRequest
from shared.index import Database
from tests.support.find import index_db, series_uid, sop_uid, study_uid


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    d = index_db(tmp_path_factory.mktemp("query"))
    yield d
    d.close()


def run(db: Database, identifier: dict[str, Any], model: str = query.STUDY_ROOT) -> list[dict]:
    q = query.build(identifier, model)
    return [query.row_values(q, r) for r in db.reader().execute(q.sql, q.params)]


def labels(rows: list[dict], key: str = "StudyInstanceUID") -> set[str]:
    by_uid = {study_uid(c): c for c in "ABCDE"}
    by_uid |= {series_uid(s): s for s in ("A1", "A2", "B1", "C1", "D1", "E1", "E2")}
    return {by_uid.get(r[key], r[key]) for r in rows}


STUDY = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}

CASES = [
    # (id, extra identifier keys at STUDY level, expected studies)
    ("universal", {}, set("ABCDE")),
    ("single value", {"PatientID": "P1"}, {"A", "D"}),
    ("single value no match", {"PatientID": "P"}, set()),
    ("star alone is universal", {"PatientID": "*"}, set("ABCDE")),
    ("trailing star", {"PatientName": "SMITH*"}, {"A", "B", "D"}),
    ("name case-insensitive", {"PatientName": "smith^john"}, {"A", "D"}),
    ("name prefix lower case", {"PatientName": "smiths*"}, {"B"}),
    ("name non-ascii", {"PatientName": "MÜLLER*"}, {"E"}),
    ("name non-ascii lower", {"PatientName": "müller^anna"}, {"E"}),
    ("question mark", {"PatientName": "SMIT?^JOHN"}, {"A", "D"}),
    ("inner star", {"PatientName": "*^ANNA"}, {"B", "E"}),
    ("quote literal", {"PatientName": "O'BRIEN*"}, {"C"}),
    ("percent literal", {"AccessionNumber": "A%1"}, {"A"}),
    ("underscore literal", {"AccessionNumber": "A_1"}, {"B"}),
    ("underscore literal in wildcard", {"AccessionNumber": "A_*"}, {"B"}),
    ("percent literal in wildcard", {"StudyDescription": "50%*"}, {"B"}),
    ("like-percent is not a wildcard", {"StudyDescription": "%"}, set()),
    ("double quote literal", {"StudyDescription": 'say "h?"'}, {"C"}),
    ("bracket literal", {"StudyDescription": "[X]*"}, {"E"}),
    ("uid list", {"StudyInstanceUID": f"{study_uid('A')}\\{study_uid('C')}"}, {"A", "C"}),
    ("uid list as list", {"StudyInstanceUID": [study_uid("B"), study_uid("D")]}, {"B", "D"}),
    ("date exact", {"StudyDate": "20240115"}, {"A", "E"}),
    ("date open end", {"StudyDate": "20240201-"}, {"B", "D"}),
    ("date open start", {"StudyDate": "-20240115"}, {"A", "C", "E"}),
    ("date closed", {"StudyDate": "20240101-20240131"}, {"A", "E"}),
    ("time range", {"StudyTime": "08-09"}, {"B"}),
    ("time upper bound is a prefix", {"StudyTime": "0830-1015"}, {"A", "B"}),
    ("time range includes 23:59:59", {"StudyTime": "2300-"}, {"C"}),
    ("time upper bound hour", {"StudyTime": "-12"}, {"A", "B", "D"}),
    ("modalities in study", {"ModalitiesInStudy": "US"}, {"D"}),
    ("modalities list", {"ModalitiesInStudy": ["MR", "SR"]}, {"B", "E"}),
    ("combined", {"PatientID": "P1", "StudyDate": "20240201-"}, {"D"}),
    ("multi-value with a universal part", {"PatientName": ["JONES*", "*"]}, set("ABCDE")),
    ("multi-value names", {"PatientName": ["O'B*", "smith^john"]}, {"A", "C", "D"}),
    ("modalities wildcard", {"ModalitiesInStudy": "S?"}, {"E"}),
    ("evicted still found (invariant 3)", {"AccessionNumber": "AX1"}, {"C"}),
    # no upper-cased copy of ReferringPhysicianName in the edge index: matched as stored
    ("referring physician as stored", {"ReferringPhysicianName": "Jones^Amy"}, {"A"}),
    ("referring physician case-sensitive", {"ReferringPhysicianName": "jones^bob"}, set()),
    ("referring physician wildcard", {"ReferringPhysicianName": "Jones*"}, {"A"}),
]


@pytest.mark.parametrize("extra,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_study_matching(db: Database, extra: dict, expected: set[str]) -> None:
    assert labels(run(db, STUDY | extra)) == expected


def test_values_never_reach_sql_text() -> None:
    q = query.build(
        {"QueryRetrieveLevel": "STUDY", "PatientName": "X'); DROP TABLE studies; --*"},
        query.STUDY_ROOT,
    )
    assert "DROP" not in q.sql and "'" not in q.sql.replace("'\\'", "")


def test_computed_study_keys(db: Database) -> None:
    ident = STUDY | {
        "StudyInstanceUID": study_uid("A"),
        "NumberOfStudyRelatedSeries": "",
        "NumberOfStudyRelatedInstances": "",
        "ModalitiesInStudy": "",
        "NumberOfPatientRelatedStudies": "",
        "PatientName": "",
        "StudyDate": "",
    }
    (row,) = run(db, ident)
    assert row["NumberOfStudyRelatedSeries"] == 2
    assert row["NumberOfStudyRelatedInstances"] == 5
    assert row["ModalitiesInStudy"] == ["CT"]
    assert row["NumberOfPatientRelatedStudies"] == 2
    assert row["PatientName"] == "SMITH^JOHN"
    assert row["StudyDate"] == "20240115"


def test_counters_are_return_keys_a_value_in_them_never_filters(db: Database) -> None:
    """PS3.4 C.3.4 and conformance 5.1: the Number of ... Related ... keys are return keys. An
    SCU that sends a value in one (some send a placeholder) still gets every match, each with
    its real count, and a non-numeric value is no error."""
    ident = STUDY | {
        "StudyInstanceUID": study_uid("A"),
        "NumberOfStudyRelatedSeries": "7",
        "NumberOfStudyRelatedInstances": "x",
        "NumberOfPatientRelatedStudies": "0",
    }
    (row,) = run(db, ident)
    assert row["NumberOfStudyRelatedSeries"] == 2
    assert row["NumberOfStudyRelatedInstances"] == 5
    assert row["NumberOfPatientRelatedStudies"] == 2
    series = {
        "QueryRetrieveLevel": "SERIES",
        "StudyInstanceUID": study_uid("A"),
        "SeriesInstanceUID": "",
        "NumberOfSeriesRelatedInstances": "1",
    }
    assert labels(run(db, series), "SeriesInstanceUID") == {"A1", "A2"}
    patient = {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1"}
    for key in ("Studies", "Series", "Instances"):
        rows = run(db, patient | {f"NumberOfPatientRelated{key}": "99"}, query.PATIENT_ROOT)
        assert [r["PatientID"] for r in rows] == ["P1"]


def test_patient_level_groups_studies(db: Database) -> None:
    ident = {
        "QueryRetrieveLevel": "PATIENT",
        "PatientID": "P1",
        "PatientName": "",
        "NumberOfPatientRelatedStudies": "",
        "NumberOfPatientRelatedSeries": "",
        "NumberOfPatientRelatedInstances": "",
    }
    (row,) = run(db, ident, query.PATIENT_ROOT)
    assert row == {
        "PatientID": "P1",
        "PatientName": "SMITH^JOHN",
        "NumberOfPatientRelatedStudies": 2,
        "NumberOfPatientRelatedSeries": 3,
        "NumberOfPatientRelatedInstances": 6,
    }
    rows = run(db, {"QueryRetrieveLevel": "PATIENT", "PatientName": "SMITH*"}, query.PATIENT_ROOT)
    assert sorted(r["PatientID"] for r in rows) == ["P1", "P2"]


def test_series_level(db: Database) -> None:
    ident = {
        "QueryRetrieveLevel": "SERIES",
        "StudyInstanceUID": study_uid("A"),
        "SeriesInstanceUID": "",
        "Modality": "",
        "NumberOfSeriesRelatedInstances": "",
        "SeriesNumber": "",
    }
    rows = run(db, ident)
    got = {labels([r], "SeriesInstanceUID").pop(): r for r in rows}
    assert set(got) == {"A1", "A2"}
    assert got["A1"]["NumberOfSeriesRelatedInstances"] == 3
    assert got["A2"]["SeriesNumber"] == 2
    assert labels(
        run(db, ident | {"StudyInstanceUID": "", "Modality": "S?"}), "SeriesInstanceUID"
    ) == {"E2"}
    assert labels(
        run(db, ident | {"StudyInstanceUID": "", "SeriesNumber": "2"}), "SeriesInstanceUID"
    ) == {"A2", "E2"}


def test_image_level_and_availability(db: Database) -> None:
    ident = {
        "QueryRetrieveLevel": "IMAGE",
        "SeriesInstanceUID": series_uid("C1"),
        "SOPInstanceUID": "",
        "InstanceNumber": "",
        "InstanceAvailability": "",
    }
    rows = run(db, ident)
    assert sorted(r["SOPInstanceUID"] for r in rows) == [sop_uid("C1", 1), sop_uid("C1", 2)]
    assert {r["InstanceAvailability"] for r in rows} == {"NEARLINE"}
    (row,) = run(db, ident | {"SeriesInstanceUID": "", "SOPInstanceUID": sop_uid("A2", 2)})
    assert row["InstanceNumber"] == 2 and row["InstanceAvailability"] == "ONLINE"


def test_unsupported_and_lower_level_keys_are_reported() -> None:
    q = query.build(
        {"QueryRetrieveLevel": "STUDY", "OtherPatientIDs": "", "SOPInstanceUID": "1.2"},
        query.STUDY_ROOT,
    )
    assert q.keywords == ("StudyInstanceUID",)
    assert q.unsupported == ("OtherPatientIDs", "SOPInstanceUID")


@pytest.mark.parametrize(
    "identifier,model",
    [
        ({"QueryRetrieveLevel": "PATIENT"}, query.STUDY_ROOT),
        ({"QueryRetrieveLevel": "FRAME"}, query.PATIENT_ROOT),
        ({}, query.STUDY_ROOT),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2024-01-01x"}, query.STUDY_ROOT),
        ({"QueryRetrieveLevel": "SERIES", "SeriesNumber": "two"}, query.STUDY_ROOT),
    ],
)
def test_bad_identifiers(identifier: dict, model: str) -> None:
    with pytest.raises(BadRequest):
        query.build(identifier, model)


@pytest.mark.parametrize(
    "identifier,index",
    [
        ({"PatientID": "P1"}, "studies_patient_id"),
        ({"PatientName": "SMITH*"}, "studies_patient_name_norm"),
        ({"PatientName": "SM?TH*"}, "studies_patient_name_norm"),
        ({"StudyDate": "20240101-20240131"}, "studies_study_date"),
    ],
)
def test_study_queries_use_an_index(db: Database, identifier: dict, index: str) -> None:
    q = query.build(STUDY | identifier, query.STUDY_ROOT, limit=10)
    plan = " ".join(r[3] for r in db.reader().execute("EXPLAIN QUERY PLAN " + q.sql, q.params))
    assert index in plan and "SCAN st" not in plan, plan


def test_image_level_of_a_series_uses_indexes(db: Database) -> None:
    q = query.build(
        {"QueryRetrieveLevel": "IMAGE", "SeriesInstanceUID": "1.2", "SOPInstanceUID": ""},
        query.STUDY_ROOT,
    )
    plan = " ".join(r[3] for r in db.reader().execute("EXPLAIN QUERY PLAN " + q.sql, q.params))
    assert "SCAN" not in plan, plan


def test_needs_unicode() -> None:
    assert not query.needs_unicode(["SMITH^JOHN", 3, None, ["CT"]])
    assert query.needs_unicode(["Müller"])
    assert query.needs_unicode([["山田"]])
