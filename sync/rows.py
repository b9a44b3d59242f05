"""What the sync agent reads about an instance: one query shape for upload, catalog and evict."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from shared.catalog import CatalogRow
from shared.dicom import Header

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
    return Instance(
        id=row["id"],
        sop_instance_uid=row["sop_instance_uid"],
        study_uid=row["study_uid"],
        series_uid=row["series_uid"],
        path=row["path"],
        size=row["size"],
        crc32c=row["crc32c"],
        attempts=row["attempts"],
        object_key=row["object_key"],
        state=row["state"],
    )


def header(row: sqlite3.Row) -> Header:
    return Header(
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        study_uid=row["study_uid"],
        series_uid=row["series_uid"],
        transfer_syntax=row["transfer_syntax"],
        patient_id=row["patient_id"],
        issuer_of_patient_id=row["issuer_of_patient_id"],
        patient_name=row["patient_name"],
        patient_birth_date=row["patient_birth_date"],
        patient_sex=row["patient_sex"],
        study_date=row["study_date"],
        study_time=row["study_time"],
        accession_number=row["accession_number"],
        study_id=row["study_id_attr"],
        study_description=row["study_description"],
        referring_physician=row["referring_physician"],
        modality=row["modality"],
        series_number=row["series_number"],
        series_description=row["series_description"],
        body_part=row["body_part"],
        series_date=row["series_date"],
        series_time=row["series_time"],
        instance_number=row["instance_number"],
        rows=row["rows"],
        columns=row["columns"],
        number_of_frames=row["number_of_frames"],
        specific_character_set=row["specific_character_set"],
    )


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
