"""Index rows for query tests: a small, hand-written study set inserted through shared.rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from shared.dicom import Header
from shared.index import Database
from shared.rows import Origin, index_instance

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"

# label -> (study attributes, [(modality, series label, instances)])
STUDIES: dict[str, tuple[dict[str, str], list[tuple[str, str, int]]]] = {
    "A": (
        dict(
            patient_id="P1",
            patient_name="SMITH^JOHN",
            study_date="20240115",
            study_time="101500",
            accession_number="A%1",
            study_description="CT_CHEST",
            referring_physician="Jones^Amy",
        ),
        [("CT", "A1", 3), ("CT", "A2", 2)],
    ),
    "B": (
        dict(
            patient_id="P2",
            patient_name="smithson^anna",
            study_date="20240201",
            study_time="083000",
            accession_number="A_1",
            study_description="50% DOSE",
            referring_physician="JONES^BOB",
        ),
        [("MR", "B1", 1)],
    ),
    "C": (
        dict(
            patient_id="P3",
            patient_name="O'BRIEN^PAT",
            study_date="20231231",
            study_time="235959",
            accession_number="AX1",
            study_description='say "hi"',
        ),
        [("CT", "C1", 2)],
    ),
    "D": (
        dict(
            patient_id="P1",
            patient_name="SMITH^JOHN",
            study_date="20240301",
            study_time="120000",
            accession_number="AB1",
            study_description="US ABDOMEN",
        ),
        [("US", "D1", 1)],
    ),
    "E": (
        dict(
            patient_id="P4",
            patient_name="Müller^Anna",
            study_date="20240115",
            study_time="",
            accession_number="A*1",
            study_description="[X] HEAD",
        ),
        [("CT", "E1", 1), ("SR", "E2", 1)],
    ),
}


def study_uid(label: str) -> str:
    return f"1.2.826.0.1.3680043.10.1255.9.{ord(label[0])}"


def series_uid(label: str) -> str:
    return f"{study_uid(label[0])}.{label[1:]}"


def sop_uid(series_label: str, n: int) -> str:
    return f"{series_uid(series_label)}.{n}"


def populate(db: Database) -> None:
    """Insert STUDIES; every instance of study C is marked evicted (invariant 3)."""
    now = 1.0e9
    with db.write() as conn:
        for label, (attrs, series) in STUDIES.items():
            for number, (modality, s_label, count) in enumerate(series, start=1):
                for i in range(1, count + 1):
                    h = Header(
                        sop_instance_uid=sop_uid(s_label, i),
                        sop_class_uid=MR if modality == "MR" else CT,
                        study_uid=study_uid(label),
                        series_uid=series_uid(s_label),
                        transfer_syntax=EXPLICIT,
                        modality=modality,
                        series_number=number,
                        series_description=f"{attrs['study_description']} {number}",
                        instance_number=i,
                        series_date=attrs["study_date"],
                        **attrs,
                    )
                    index_instance(
                        conn, replace(h), f"x/{s_label}{i}", 1, "0", Origin("import"), now
                    )
        conn.execute(
            "UPDATE instances SET state = 'evicted' WHERE study_id = "
            "(SELECT id FROM studies WHERE study_uid = ?)",
            (study_uid("C"),),
        )


def index_db(tmp_path: Path) -> Database:
    db = Database(tmp_path / "index.sqlite")
    populate(db)
    return db
