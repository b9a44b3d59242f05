"""Applying one journal object to a catalog: the same statements for SQLite and PostgreSQL.

Rows are collapsed first (the last row per SOP Instance UID wins, as the journal's contract
says), split into study, series and instance rows (the last row of each study/series gives its
attributes), loaded into temporary stage tables (`executemany` on SQLite, COPY on PostgreSQL)
and merged with set-based upserts; then the counters of the studies and series the object
touched are recounted, and the site's cursor moves, all in the caller's one transaction: an
object is applied whole or not at all, and applying it again changes nothing.

A study's or series' attribute is the latest non-empty value applied (a later STOW of an SR
with an empty description does not blank the edge's); an instance's attributes are its last row's.
A correction (a row whose object is under a revision key) sets its study's attributes as they
are, empty ones included, and they stay until the next correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from cloud_api.catalog.schema import COPY_COLUMNS, attr_columns, norm_attrs
from shared import attributes
from shared.keys import is_revision_key
from shared.sqldialect import Dialect

STUDY_STAGE = (*attr_columns("studies"), "specific_character_set")
SERIES_STAGE = ("study_uid", *attr_columns("series"))
INSTANCE_STAGE = ("series_uid", *attr_columns("instances"), *COPY_COLUMNS)
STAGES = {
    "s_studies": STUDY_STAGE,
    "s_series": SERIES_STAGE,
    "s_instances": INSTANCE_STAGE,
    "s_retracted": ("sop_instance_uid",),
    "s_revised": STUDY_STAGE,
    "t_studies": ("id",),
    "t_series": ("id",),
}
_INT = attributes.int_columns() | {"size", "id"}
_REAL = {"received_at"}
_NORMS = {a.norm_column: a.column for t in ("studies", "series") for a in norm_attrs(t)}


@dataclass
class Batch:
    studies: list[tuple[Any, ...]] = field(default_factory=list)
    series: list[tuple[Any, ...]] = field(default_factory=list)
    instances: list[tuple[Any, ...]] = field(default_factory=list)
    retracted: list[tuple[str]] = field(default_factory=list)
    revised: list[tuple[Any, ...]] = field(default_factory=list)  # studies of corrected rows
    rows: int = 0


class Tx(Protocol):
    """One backend transaction, as the apply needs it."""

    def execute(
        self, sql: str, params: list[Any] | tuple[Any, ...] = ()
    ) -> list[tuple[Any, ...]]: ...

    def load(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None: ...

    def clear(self, tables: tuple[str, ...]) -> None: ...

    def analyze(self, tables: tuple[str, ...]) -> None:
        """Give the planner the stage tables' sizes (PostgreSQL never analyses temporary
        tables itself, and without statistics it joins them by scanning the catalog)."""


def _value(d: dict[str, Any], col: str) -> Any:
    if col in _NORMS:
        return attributes.normalize(str(d.get(_NORMS[col]) or ""))
    v = d.get(col)
    if v is None:
        return None if col in _INT else (0.0 if col in _REAL else "")
    return v


def prepare(rows: list[dict[str, Any]]) -> Batch:
    """Rows as `CatalogRow.to_json()` dicts -> the stage rows of one object."""
    last: dict[str, dict[str, Any]] = {}
    for d in rows:
        last.pop(d["sop_instance_uid"], None)  # keep the journal's order of last rows
        last[d["sop_instance_uid"]] = d
    b = Batch(rows=len(rows))
    studies: dict[str, tuple[Any, ...]] = {}
    series: dict[str, tuple[Any, ...]] = {}
    revised: dict[str, tuple[Any, ...]] = {}
    for uid, d in last.items():
        if d.get("deleted"):
            b.retracted.append((uid,))
            continue
        studies[d["study_uid"]] = tuple(_value(d, c) for c in STUDY_STAGE)
        if is_revision_key(str(d.get("object_key", ""))):
            revised[d["study_uid"]] = studies[d["study_uid"]]
        series[d["series_uid"]] = tuple(_value(d, c) for c in SERIES_STAGE)
        b.instances.append(tuple(_value(d, c) for c in INSTANCE_STAGE))
    b.studies, b.series = list(studies.values()), list(series.values())
    b.revised = list(revised.values())
    return b


def stage_ddl(d: Dialect) -> list[str]:
    """The stage tables: temporary tables of the connection that applies."""
    real = "REAL" if d.name == "sqlite" else "DOUBLE PRECISION"
    # the catalog's collation: joins on UIDs can then use the catalog's unique indexes
    text = "TEXT" if d.name == "sqlite" else 'TEXT COLLATE "C"'
    out = []
    for table, cols in STAGES.items():
        typed = ", ".join(
            f"{c} {'BIGINT' if c in _INT else (real if c in _REAL else text)}" for c in cols
        )
        out.append(f"CREATE TEMP TABLE {table} ({typed})")
    return out


def _keep(table: str, cols: tuple[str, ...], unique: str) -> str:
    """SET clauses keeping the stored value when the new one is empty; a corrected study's
    attributes (`revised`) are kept whatever a row that is not a correction says."""
    out = []
    pin = f"{table}.revised = 0 AND " if table == "studies" else ""
    for c in cols:
        if c == unique:
            continue
        if c in _INT:
            out.append(f"{c} = COALESCE(excluded.{c}, {table}.{c})")
        else:
            out.append(
                f"{c} = CASE WHEN {pin}excluded.{c} <> '' THEN excluded.{c} ELSE {table}.{c} END"
            )
    return ", ".join(out)


def _corrections() -> str:
    """A corrected instance's row (its object under a revision key, edge/corrections.py)
    carries the study's corrected attributes: they replace the stored ones, empty values
    included, and pin them against later rows that are not corrections (an instance sent
    again elsewhere with the old values)."""
    cols = [c for c in STUDY_STAGE if c != "study_uid"]
    sets = ", ".join(f"{c} = r.{c}" for c in cols)
    return (
        f"UPDATE studies SET {sets}, revised = 1 FROM s_revised r"
        " WHERE r.study_uid = studies.study_uid"
    )


def _upserts(d: Dialect) -> list[str]:
    p = d.param
    st_cols = ", ".join(STUDY_STAGE)
    se_attrs = attr_columns("series")
    in_attrs = attr_columns("instances")
    return [
        f"INSERT INTO studies ({st_cols}) SELECT {st_cols} FROM s_studies WHERE 1 = 1"
        f" ON CONFLICT (study_uid) DO UPDATE SET {_keep('studies', STUDY_STAGE, 'study_uid')}",
        "INSERT INTO t_studies (id) SELECT st.id FROM studies st"
        " JOIN s_studies s ON s.study_uid = st.study_uid",
        f"INSERT INTO series (study_id, {', '.join(se_attrs)})"
        f" SELECT st.id, {', '.join('s.' + c for c in se_attrs)} FROM s_series s"
        " JOIN studies st ON st.study_uid = s.study_uid WHERE 1 = 1"
        f" ON CONFLICT (series_uid) DO UPDATE SET {_keep('series', se_attrs, 'series_uid')}",
        "INSERT INTO t_series (id) SELECT se.id FROM series se"
        " JOIN s_series s ON s.series_uid = se.series_uid",
        # one upsert each for instances and copies: measured against update-then-insert
        # (two joins per row), 2.4x faster on SQLite and 1.6x on PostgreSQL at 100-200k rows
        f"INSERT INTO instances (series_id, study_id, {', '.join(in_attrs)})"
        f" SELECT se.id, se.study_id, {', '.join('s.' + c for c in in_attrs)} FROM s_instances s"
        " JOIN series se ON se.series_uid = s.series_uid WHERE 1 = 1"
        " ON CONFLICT (sop_instance_uid) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in in_attrs if c != "sop_instance_uid"),
        f"INSERT INTO copies (instance_id, site, study_id, series_id, {', '.join(COPY_COLUMNS)})"
        f" SELECT i.id, {p}, i.study_id, i.series_id, {', '.join('s.' + c for c in COPY_COLUMNS)}"
        " FROM s_instances s JOIN instances i ON i.sop_instance_uid = s.sop_instance_uid"
        " WHERE 1 = 1 ON CONFLICT (instance_id, site) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in COPY_COLUMNS),
    ]


def _retractions(d: Dialect) -> list[tuple[str, bool]]:
    """(statement, whether it takes the site)."""
    p = d.param
    retracted = (
        "SELECT i.id FROM instances i JOIN s_retracted r ON r.sop_instance_uid = i.sop_instance_uid"
    )
    return [
        (
            f"INSERT INTO t_studies (id) SELECT c.study_id FROM copies c"
            f" WHERE c.site = {p} AND c.instance_id IN ({retracted})",
            True,
        ),
        (
            f"INSERT INTO t_series (id) SELECT c.series_id FROM copies c"
            f" WHERE c.site = {p} AND c.instance_id IN ({retracted})",
            True,
        ),
        (f"DELETE FROM copies WHERE site = {p} AND instance_id IN ({retracted})", True),
        (
            "DELETE FROM instances WHERE sop_instance_uid IN (SELECT sop_instance_uid FROM"
            " s_retracted) AND NOT EXISTS"
            " (SELECT 1 FROM copies c WHERE c.instance_id = instances.id)",
            False,
        ),
    ]


def _recounts(d: Dialect) -> list[str]:
    modalities = d.join_distinct(
        "x.modality", "series x WHERE x.study_id = studies.id AND x.modality <> ''"
    )
    return [
        "UPDATE series SET num_instances = (SELECT count(*) FROM instances i"
        " WHERE i.series_id = series.id) WHERE id IN (SELECT id FROM t_series)",
        "DELETE FROM series WHERE id IN (SELECT id FROM t_series) AND num_instances = 0",
        "UPDATE studies SET"
        " num_instances = (SELECT count(*) FROM instances i WHERE i.study_id = studies.id),"
        " num_series = (SELECT count(*) FROM series se WHERE se.study_id = studies.id),"
        f" modalities = COALESCE({modalities}, '')"
        " WHERE id IN (SELECT id FROM t_studies)",
        "DELETE FROM studies WHERE id IN (SELECT id FROM t_studies) AND num_instances = 0",
        "DELETE FROM study_sites WHERE study_id IN (SELECT id FROM t_studies)",
        "INSERT INTO study_sites (study_id, site, num_series, num_instances)"
        " SELECT study_id, site, count(DISTINCT series_id), count(*) FROM copies"
        " WHERE study_id IN (SELECT id FROM t_studies) GROUP BY study_id, site",
    ]


def apply_batch(tx: Tx, d: Dialect, site: str, rows: list[dict[str, Any]], key: str | None) -> int:
    """Apply one object inside the caller's transaction; 0 if `key` is already applied."""
    p = d.param
    if key is not None:
        found = tx.execute(f"SELECT last_key FROM cursors WHERE site = {p}", [site])
        if found and found[0][0] >= key:
            return 0
    batch = prepare(rows)
    tx.clear(tuple(STAGES))
    tx.load("s_studies", STUDY_STAGE, batch.studies)
    tx.load("s_series", SERIES_STAGE, batch.series)
    tx.load("s_instances", INSTANCE_STAGE, batch.instances)
    tx.analyze(("s_studies", "s_series", "s_instances"))
    if batch.instances:
        for sql in _upserts(d):
            tx.execute(sql, [site] * sql.count(p))
    if batch.revised:
        tx.load("s_revised", STUDY_STAGE, batch.revised)
        tx.execute(_corrections())
    if batch.retracted:
        tx.load("s_retracted", ("sop_instance_uid",), batch.retracted)
        for sql, takes_site in _retractions(d):
            tx.execute(sql, [site] if takes_site else [])
    tx.analyze(("t_studies", "t_series"))
    for sql in _recounts(d):
        tx.execute(sql)
    if key is not None:
        tx.execute(
            f"INSERT INTO cursors (site, last_key, rows) VALUES ({p}, {p}, {p})"
            " ON CONFLICT (site) DO UPDATE SET last_key = CASE WHEN excluded.last_key >"
            " cursors.last_key THEN excluded.last_key ELSE cursors.last_key END,"
            " rows = cursors.rows + excluded.rows",
            [site, key, batch.rows],
        )
    return batch.rows
