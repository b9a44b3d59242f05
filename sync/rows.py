"""What the sync agent reads about an instance: one query shape for upload, catalog and evict."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from shared.catalog import CatalogRow
from shared.dicom import Header
from shared.rows import from_row

# Every column the catalog needs, so one join serves the upload loop and the catalog writer.
SELECT = """
SELECT i.id, i.sop_instance_uid, i.sop_class_uid, i.instance_number, i.rows, i.columns,
       i.number_of_frames, i.specific_character_set, i.transfer_syntax, i.path, i.size,
       i.crc32c, i.received_at, i.calling_ae, i.source, i.state, i.attempts, i.object_key,
       i.catalog_seq,
       se.series_uid, se.modality, se.series_number, se.series_description, se.body_part,
       se.series_date, se.series_time,
       s.study_uid, s.patient_id, s.issuer_of_patient_id, s.patient_name,
       s.patient_birth_date, s.patient_sex, s.study_date, s.study_time, s.accession_number,
       s.study_id AS study_id_attr, s.study_description, s.referring_physician
FROM instances i JOIN series se ON se.id = i.series_id JOIN studies s ON s.id = i.study_id
"""


@dataclass(frozen=True)
class Instance:
    id: int
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    path: str
    size: int
    crc32c: str
    attempts: int
    object_key: str
    state: str


def instance(row: sqlite3.Row) -> Instance:
    return from_row(Instance, row)


def header(row: sqlite3.Row) -> Header:
    return from_row(Header, row, study_id="study_id_attr")


def catalog_row(row: sqlite3.Row, site: str) -> CatalogRow:
    return CatalogRow(
        header=header(row),
        size=row["size"],
        crc32c=row["crc32c"],
        object_key=row["object_key"],
        site=site,
        received_at=row["received_at"],
        calling_ae=row["calling_ae"],
        source=row["source"],
    )
