"""What the sync agent reads about an instance: one query shape for upload, catalog and evict."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from shared import attributes
from shared.catalog import CatalogRow
from shared.dicom import Header
from shared.lifecycle import HIDDEN_STATES, State
from shared.rows import from_row


def _cols(alias: str, table: str) -> str:
    return ", ".join(
        f"{alias}.{c} AS study_id_attr" if (table, c) == ("studies", "study_id") else f"{alias}.{c}"
        for c in attributes.columns(table)
    )


# Every column the catalog needs, so one join serves the upload loop and the catalog writer;
# the attribute columns come from the registry (studies.study_id is the StudyID attribute).
SELECT = f"""
SELECT i.id, {_cols("i", "instances")}, i.transfer_syntax, i.path, i.size,
       i.crc32c, i.received_at, i.calling_ae, i.source, i.state, i.attempts, i.object_key,
       i.catalog_seq, i.deleted_at, {_cols("se", "series")}, {_cols("s", "studies")}
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
    """The journal row of an index row; a deleted one is a tombstone (shared/catalog.py)."""
    state = State(row["state"])
    return CatalogRow(
        header=header(row),
        size=row["size"],
        crc32c=row["crc32c"],
        object_key=row["object_key"],
        site=site,
        received_at=row["received_at"],
        calling_ae=row["calling_ae"],
        source=row["source"],
        deleted=state in HIDDEN_STATES,
        purged=state in (State.PURGING, State.PURGED),
        deleted_at=float(row["deleted_at"] or 0.0),
    )
