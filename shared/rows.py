"""Writing index rows: one function inserts an instance with its study and series.

Used by the edge's ingest and by the sync agent's restore (rows rebuilt from the catalog).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from shared.dicom import Header
from shared.lifecycle import State, transition


@dataclass(frozen=True)
class Origin:
    """Which door an instance came through; recorded in its row."""

    source: str  # dimse | stow | hotfolder | import | restore
    calling_ae: str = ""
    peer: str = ""


def index_instance(
    conn: sqlite3.Connection,
    h: Header,
    relpath: str,
    size: int,
    crc: str,
    origin: Origin,
    now: float,
    state: State = State.CACHED,
) -> int:
    """Insert one instance with its study and series rows, inside the caller's transaction."""
    study_id = _upsert_study(conn, h, now)
    series_row = conn.execute(
        "SELECT id FROM series WHERE series_uid = ?", (h.series_uid,)
    ).fetchone()
    if series_row is None:
        new_series = conn.execute(
            "INSERT INTO series(series_uid, study_id, modality, series_number, "
            "series_description, body_part, series_date, series_time, created_at) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (
                h.series_uid,
                study_id,
                h.modality,
                h.series_number,
                h.series_description,
                h.body_part,
                h.series_date,
                h.series_time,
                now,
            ),
        ).lastrowid
        series_id = int(new_series or 0)
        conn.execute("UPDATE studies SET num_series = num_series + 1 WHERE id = ?", (study_id,))
    else:
        series_id = int(series_row[0])
    try:
        cur = _insert(conn, h, series_id, study_id, relpath, size, crc, origin, now, state)
    except sqlite3.IntegrityError:
        revived = _revive_lost(conn, h, series_id, relpath, size, crc, now, state)
        if revived is None:
            raise
        conn.execute("UPDATE studies SET updated_at = ? WHERE id = ?", (now, study_id))
        return revived
    conn.execute("UPDATE series SET num_instances = num_instances + 1 WHERE id = ?", (series_id,))
    conn.execute(
        "UPDATE studies SET num_instances = num_instances + 1, updated_at = ? WHERE id = ?",
        (now, study_id),
    )
    return int(cur.lastrowid or 0)


def _insert(
    conn: sqlite3.Connection,
    h: Header,
    series_id: int,
    study_id: int,
    relpath: str,
    size: int,
    crc: str,
    origin: Origin,
    now: float,
    state: State,
) -> sqlite3.Cursor:
    return conn.execute(
        "INSERT INTO instances(sop_instance_uid, series_id, study_id, sop_class_uid, "
        "instance_number, rows, columns, number_of_frames, specific_character_set, "
        "transfer_syntax, path, size, crc32c, received_at, calling_ae, source, state, "
        "state_changed_at, last_access) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            h.sop_instance_uid,
            series_id,
            study_id,
            h.sop_class_uid,
            h.instance_number,
            h.rows,
            h.columns,
            h.number_of_frames,
            h.specific_character_set,
            h.transfer_syntax,
            relpath,
            size,
            crc,
            now,
            origin.calling_ae,
            origin.source,
            state.value,
            now,
            now,
        ),
    )


def _revive_lost(
    conn: sqlite3.Connection,
    h: Header,
    series_id: int,
    relpath: str,
    size: int,
    crc: str,
    now: float,
    state: State,
) -> int | None:
    """An instance sent again after it was lost (no intact copy anywhere) becomes these bytes:
    `lost -> cached`, uploaded again. Nothing is kept that could conflict, so any bytes of the
    same instance in the same series are taken. None: not a lost row, leave the error."""
    if state is not State.CACHED:
        return None
    row = conn.execute(
        "SELECT id, series_id FROM instances WHERE sop_instance_uid = ? AND state = ?",
        (h.sop_instance_uid, State.LOST.value),
    ).fetchone()
    if row is None or row[1] != series_id:
        return None
    ok = transition(
        conn,
        row[0],
        State.LOST,
        State.CACHED,
        path=relpath,
        size=size,
        crc32c=crc,
        transfer_syntax=h.transfer_syntax,
        object_key="",
        attempts=0,
        next_attempt_at=0,
        last_error="",
        last_access=now,
    )
    return int(row[0]) if ok else None


def _upsert_study(conn: sqlite3.Connection, h: Header, now: float) -> int:
    row = conn.execute("SELECT id FROM studies WHERE study_uid = ?", (h.study_uid,)).fetchone()
    if row is not None:
        return int(row[0])
    cur = conn.execute(
        "INSERT INTO studies(study_uid, patient_id, issuer_of_patient_id, patient_name, "
        "patient_name_norm, patient_birth_date, patient_sex, study_date, study_time, "
        "accession_number, study_id, study_description, referring_physician, created_at, "
        "updated_at, last_access) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            h.study_uid,
            h.patient_id,
            h.issuer_of_patient_id,
            h.patient_name,
            normalize_name(h.patient_name),
            h.patient_birth_date,
            h.patient_sex,
            h.study_date,
            h.study_time,
            h.accession_number,
            h.study_id,
            h.study_description,
            h.referring_physician,
            now,
            now,
            now,
        ),
    )
    return int(cur.lastrowid or 0)


def normalize_name(name: str) -> str:
    """The form person names are matched in: case-folded to upper case."""
    return name.upper()


T = TypeVar("T")


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def from_row(cls: type[T], row: sqlite3.Row, **columns: str) -> T:
    """Build a dataclass from an index row by field name; `columns` maps a field to a column of
    another name. One copy instead of a field-by-field constructor per module, so a dataclass
    and the rows that feed it cannot drift apart (a missing column raises IndexError)."""
    values: dict[str, Any] = {n: row[columns.get(n, n)] for n in _field_names(cls)}
    return cls(**values)
