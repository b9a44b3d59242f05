"""Writing index rows: one function inserts an instance with its study and series.

Used by the edge's ingest and by the sync agent's restore (rows rebuilt from the catalog).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from shared import attributes
from shared.dicom import Header
from shared.index import NORMALISED
from shared.lifecycle import HIDDEN_SQL, State, transition


@dataclass(frozen=True)
class Origin:
    """Which door an instance came through; recorded in its row."""

    source: str  # dimse | stow | hotfolder | import | restore
    calling_ae: str = ""
    peer: str = ""


def _row_sql(table: str, extra: tuple[str, ...]) -> tuple[tuple[attributes.Attribute, ...], str]:
    attrs = attributes.stored_at(table)
    norms = tuple(a for a in attrs if a.keyword in NORMALISED)
    names = [a.column for a in attrs] + [a.norm_column for a in norms] + list(extra)
    sql = f"INSERT INTO {table}({', '.join(names)}) VALUES ({','.join('?' * len(names))})"
    return attrs + norms, sql


# Registry columns per table (and the upper-cased copies this schema keeps), then the rest.
_STUDY, _STUDY_SQL = _row_sql("studies", ("created_at", "updated_at", "last_access"))
_SERIES, _SERIES_SQL = _row_sql("series", ("study_id", "created_at"))
_INSTANCE, _INSTANCE_SQL = _row_sql(
    "instances",
    (
        "series_id",
        "study_id",
        "transfer_syntax",
        "path",
        "size",
        "crc32c",
        "received_at",
        "calling_ae",
        "source",
        "state",
        "state_changed_at",
        "last_access",
    ),
)


# (plain columns, upper-cased copies) per attribute tuple above, computed once: this runs on
# every ingest.
_PLANS = {
    id(attrs): (
        tuple(a.column for a in attrs[: len(attributes.stored_at(attrs[0].table))]),
        tuple(a.column for a in attrs[len(attributes.stored_at(attrs[0].table)) :]),
    )
    for attrs in (_STUDY, _SERIES, _INSTANCE)
}


def _values(attrs: tuple[attributes.Attribute, ...], h: Header) -> list[Any]:
    plain, normed = _PLANS[id(attrs)]
    return [getattr(h, c) for c in plain] + [normalize_name(getattr(h, c)) for c in normed]


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
        "SELECT id, num_instances FROM series WHERE series_uid = ?", (h.series_uid,)
    ).fetchone()
    if series_row is None:
        new_series = conn.execute(_SERIES_SQL, (*_values(_SERIES, h), study_id, now)).lastrowid
        series_id = int(new_series or 0)
        conn.execute("UPDATE studies SET num_series = num_series + 1 WHERE id = ?", (study_id,))
    else:
        series_id = int(series_row[0])
        if series_row[1] == 0:  # every instance of it was deleted: visible again
            conn.execute("UPDATE studies SET num_series = num_series + 1 WHERE id = ?", (study_id,))
    try:
        cur = _insert(conn, h, series_id, study_id, relpath, size, crc, origin, now, state)
    except sqlite3.IntegrityError:
        revived = _revive_lost(conn, h, series_id, relpath, size, crc, now, state)
        if revived is None:
            raise
        conn.execute("UPDATE studies SET updated_at = ? WHERE id = ?", (now, study_id))
        recount(conn, [study_id], [series_id])  # a purged row was not counted
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
        _INSTANCE_SQL,
        (
            *_values(_INSTANCE, h),
            series_id,
            study_id,
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
    """An instance sent again after it was lost (no intact copy anywhere) or purged (deleted,
    then its grace ran out) becomes these bytes: `lost|purged -> cached`, uploaded again.
    Nothing is kept that could conflict, so any bytes of the same instance in the same series
    are taken. None: neither, leave the error."""
    if state is not State.CACHED:
        return None
    row = conn.execute(
        "SELECT id, series_id, state FROM instances WHERE sop_instance_uid = ? AND state IN (?, ?)",
        (h.sop_instance_uid, State.LOST.value, State.PURGED.value),
    ).fetchone()
    if row is None or row[1] != series_id:
        return None
    ok = transition(
        conn,
        row[0],
        State(row[2]),
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
        deleted_at=None,
        deleted_from="",
        catalog_seq=0,
    )
    return int(row[0]) if ok else None


def recount(conn: sqlite3.Connection, study_ids: list[int], series_ids: list[int]) -> None:
    """Recompute the counters of these studies and series from their visible instances
    (deleted ones are not counted: C-FIND's computed keys and the browser read the counters)."""
    hidden = f"state NOT IN ({HIDDEN_SQL})"
    for i in range(0, len(series_ids), 500):
        chunk = series_ids[i : i + 500]
        conn.execute(
            "UPDATE series SET num_instances = (SELECT count(*) FROM instances i "
            f"WHERE i.series_id = series.id AND i.{hidden}) "
            f"WHERE id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
    for i in range(0, len(study_ids), 500):
        chunk = study_ids[i : i + 500]
        conn.execute(
            "UPDATE studies SET num_instances = (SELECT count(*) FROM instances i "
            f"WHERE i.study_id = studies.id AND i.{hidden}), num_series = (SELECT count(*) "
            "FROM series se WHERE se.study_id = studies.id AND se.num_instances > 0) "
            f"WHERE id IN ({','.join('?' * len(chunk))})",
            chunk,
        )


def _upsert_study(conn: sqlite3.Connection, h: Header, now: float) -> int:
    row = conn.execute("SELECT id FROM studies WHERE study_uid = ?", (h.study_uid,)).fetchone()
    if row is not None:
        return int(row[0])
    cur = conn.execute(_STUDY_SQL, (*_values(_STUDY, h), now, now, now))
    return int(cur.lastrowid or 0)


def normalize_name(name: str) -> str:
    """The form person names are matched in: case-folded to upper case."""
    return attributes.normalize(name)


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
