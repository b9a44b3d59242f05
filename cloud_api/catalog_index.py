"""The cloud API's query index: a local SQLite file derived only from `catalog/<site>/` objects.

Nothing else feeds it, so deleting the file and restarting rebuilds the same answers, and any
number of replicas can run side by side on one bucket, each with its own file. A cursor per site
(the last catalog key applied) lets a poll list only newer objects (`start_offset`).

All methods are synchronous; the app calls them from worker threads. One writer connection
(behind a lock), one reader connection per thread, WAL, like `shared.index.Database`. The file is
derived data, so the writer runs with `synchronous=OFF`: a crash can only cost a rebuild.
"""

from __future__ import annotations

import gzip
import json
import logging
import operator
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.catalog import CatalogRow
from shared.index import connect, transaction
from shared.keys import catalog_prefix
from shared.rows import normalize_name
from shared.store.base import ObjectStore

log = logging.getLogger("hpacs.cloud.catalog")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE studies (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    patient_id TEXT NOT NULL DEFAULT '',
    issuer_of_patient_id TEXT NOT NULL DEFAULT '',
    patient_name TEXT NOT NULL DEFAULT '',
    patient_name_norm TEXT NOT NULL DEFAULT '',
    patient_birth_date TEXT NOT NULL DEFAULT '',
    patient_sex TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '',
    study_time TEXT NOT NULL DEFAULT '',
    accession_number TEXT NOT NULL DEFAULT '',
    study_id TEXT NOT NULL DEFAULT '',
    study_description TEXT NOT NULL DEFAULT '',
    referring_physician TEXT NOT NULL DEFAULT '',
    specific_character_set TEXT NOT NULL DEFAULT '',
    num_series INTEGER NOT NULL DEFAULT 0,
    num_instances INTEGER NOT NULL DEFAULT 0,
    UNIQUE (study_uid, site)
);
CREATE INDEX studies_patient_id ON studies(patient_id);
CREATE INDEX studies_patient_name_norm ON studies(patient_name_norm);
CREATE INDEX studies_study_date ON studies(study_date);
CREATE INDEX studies_accession_number ON studies(accession_number);
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    site TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    series_number INTEGER,
    series_description TEXT NOT NULL DEFAULT '',
    body_part TEXT NOT NULL DEFAULT '',
    series_date TEXT NOT NULL DEFAULT '',
    series_time TEXT NOT NULL DEFAULT '',
    num_instances INTEGER NOT NULL DEFAULT 0,
    UNIQUE (series_uid, site)
);
CREATE INDEX series_study_id ON series(study_id);
CREATE INDEX series_modality ON series(modality);
CREATE TABLE instances (
    id INTEGER PRIMARY KEY,
    series_id INTEGER NOT NULL REFERENCES series(id),
    study_id INTEGER NOT NULL REFERENCES studies(id),
    site TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    rows INTEGER,
    columns INTEGER,
    number_of_frames INTEGER,
    transfer_syntax TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size INTEGER NOT NULL,
    crc32c TEXT NOT NULL,
    received_at REAL NOT NULL,
    UNIQUE (sop_instance_uid, site)
);
CREATE INDEX instances_series_id ON instances(series_id);
CREATE INDEX instances_study_id ON instances(study_id);
CREATE TABLE cursors (
    site TEXT PRIMARY KEY,
    last_key TEXT NOT NULL,
    rows INTEGER NOT NULL DEFAULT 0
)
"""


@dataclass
class PollResult:
    objects: int = 0
    rows: int = 0
    seconds: float = 0.0


class CatalogIndex:
    """SQLite index over every site's catalog journal."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = connect(self.path)
        self._writer.execute("PRAGMA synchronous=OFF")
        self._writer.execute("PRAGMA foreign_keys=OFF")
        self._migrate()
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._poll_lock = threading.Lock()

    def _migrate(self) -> None:
        version = self._writer.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version != 0:  # derived data: an unknown schema is simply rebuilt
            for table in ("instances", "series", "studies", "cursors"):
                self._writer.execute(f"DROP TABLE IF EXISTS {table}")
        with transaction(self._writer) as conn:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._writer) as conn:
            yield conn

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._lock:
            self._writer.close()

    # ---- reading the catalog ---------------------------------------------------------------

    def cursors(self) -> dict[str, str]:
        rows = self.reader().execute("SELECT site, last_key FROM cursors").fetchall()
        return {r[0]: r[1] for r in rows}

    def sites(self) -> list[str]:
        return sorted(self.cursors())

    def poll(self, store: ObjectStore) -> PollResult:
        """Apply every catalog object newer than each site's cursor; discovers new sites."""
        t0 = time.monotonic()
        result = PollResult()
        with self._poll_lock:
            cursors = self.cursors()
            for site in _discover_sites(store):
                last = cursors.get(site, "")
                keys = [
                    i.key
                    for i in store.list(catalog_prefix(site), start_offset=last)
                    if i.key > last
                ]
                # fetch and decode the next object while this one is written (SQLite releases
                # the GIL while it works, so the two overlap on two cores)
                with ThreadPoolExecutor(1, thread_name_prefix="catalog-fetch") as pool:
                    nxt = pool.submit(_fetch, store, keys[0]) if keys else None
                    for n, key in enumerate(keys):
                        assert nxt is not None
                        rows = nxt.result()
                        if n + 1 < len(keys):
                            nxt = pool.submit(_fetch, store, keys[n + 1])
                        self._apply(site, rows, key)
                        result.objects += 1
                        result.rows += len(rows)
        result.seconds = time.monotonic() - t0
        return result

    def apply(self, site: str, rows: Iterable[CatalogRow], key: str | None = None) -> None:
        """Apply rows (idempotent); with `key`, also move the site's cursor there."""
        self._apply(site, [r.to_json() for r in rows], key)

    def _apply(self, site: str, rows: list[dict[str, Any]], key: str | None) -> None:
        """Rows as `CatalogRow.to_json()` dicts: the hot path of a rebuild works on them
        directly instead of building dataclasses for a million rows."""
        with self.write() as conn:
            touched_studies: set[int] = set()
            touched_series: set[int] = set()
            known: dict[str, int] = {}  # study and series UID -> row id, within this object
            pending: list[tuple[Any, ...]] = []
            for d in rows:
                if d.get("deleted"):
                    _insert_instances(conn, pending)
                    ids = _delete_instance(conn, site, d["sop_instance_uid"])
                else:
                    ids = _upsert_parents(conn, site, d, known)
                    pending.append(_instance_params(site, d, ids))
                if ids:
                    touched_studies.add(ids[0])
                    touched_series.add(ids[1])
            _insert_instances(conn, pending)
            _recount(conn, touched_studies, touched_series)
            if key is not None:
                conn.execute(
                    "INSERT INTO cursors(site, last_key, rows) VALUES (?,?,?) "
                    "ON CONFLICT(site) DO UPDATE SET last_key = max(last_key, excluded.last_key), "
                    "rows = rows + excluded.rows",
                    (site, key, len(rows)),
                )

    def counts(self) -> dict[str, int]:
        r = self.reader()
        return {
            t: r.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("studies", "series", "instances")
        }


def _discover_sites(store: ObjectStore) -> Iterator[str]:
    """Sites with a catalog, in order: one short listing per site, jumping past each prefix."""
    offset = "catalog/"
    while True:
        first = next(iter(store.list("catalog/", start_offset=offset)), None)
        if first is None:
            return
        parts = first.key.split("/")
        if len(parts) < 3:
            offset = first.key + "\x00"
            continue
        site = parts[1]
        yield site
        offset = f"catalog/{site}0"  # "0" sorts right after "/": skips catalog/<site>/*


def _fetch(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    with store.open(key) as fh:
        return decode_rows(fh.read())


def decode_rows(data: bytes) -> list[dict[str, Any]]:
    """A catalog object's rows as dicts (the `CatalogRow.to_json` form), parsed in one call."""
    text = gzip.decompress(data).decode("utf-8").strip()
    if not text:
        return []
    return json.loads("[" + ",".join(line for line in text.split("\n") if line) + "]")


_STUDY_COLS = (
    "patient_id",
    "issuer_of_patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "accession_number",
    "study_id",
    "study_description",
    "referring_physician",
    "specific_character_set",
)
_SERIES_COLS = (
    "modality",
    "series_number",
    "series_description",
    "body_part",
    "series_date",
    "series_time",
)
_INSTANCE_COLS = (
    "sop_instance_uid",
    "sop_class_uid",
    "instance_number",
    "rows",
    "columns",
    "number_of_frames",
    "transfer_syntax",
    "object_key",
    "size",
    "crc32c",
    "received_at",
)
_TEXT_DEFAULT = {"series_number": None, "number_of_frames": None, "instance_number": None}


def _v(d: dict[str, Any], col: str) -> Any:
    v = d.get(col)
    if v is None:
        return None if col in _TEXT_DEFAULT or col in ("rows", "columns") else ""
    return v


def _upsert_parents(
    conn: sqlite3.Connection, site: str, d: dict[str, Any], known: dict[str, int]
) -> tuple[int, int]:
    study_uid, series_uid = d["study_uid"], d["series_uid"]
    study_id = known.get(study_uid)
    if study_id is None:
        study_id = known[study_uid] = _find_or_insert(
            conn,
            "studies",
            "study_uid",
            site,
            {"site": site, "study_uid": study_uid},
            {"patient_name_norm": normalize_name(_v(d, "patient_name"))},
            _STUDY_COLS,
            d,
        )
    series_id = known.get(series_uid)
    if series_id is None:
        series_id = known[series_uid] = _find_or_insert(
            conn,
            "series",
            "series_uid",
            site,
            {"study_id": study_id, "site": site, "series_uid": series_uid},
            {},
            _SERIES_COLS,
            d,
        )
    return study_id, series_id


def _find_or_insert(
    conn: sqlite3.Connection,
    table: str,
    uid_col: str,
    site: str,
    keys: dict[str, Any],
    extra: dict[str, Any],
    cols: tuple[str, ...],
    d: dict[str, Any],
) -> int:
    """The id of a site's study or series row, inserted from a catalog row when new."""
    found = conn.execute(
        f"SELECT id FROM {table} WHERE {uid_col} = ? AND site = ?", (keys[uid_col], site)
    ).fetchone()
    if found is not None:
        return int(found[0])
    names = [*keys, *extra, *cols]
    values = [*keys.values(), *extra.values(), *(_v(d, c) for c in cols)]
    cur = conn.execute(
        f"INSERT INTO {table}({', '.join(names)}) VALUES ({','.join('?' * len(names))})", values
    )
    return int(cur.lastrowid or 0)


_instance_values = operator.itemgetter(*_INSTANCE_COLS)


def _instance_params(site: str, d: dict[str, Any], ids: tuple[int, int]) -> tuple[Any, ...]:
    try:
        values = _instance_values(d)  # version-1 rows carry every field: the fast path
    except KeyError:
        values = tuple(_v(d, c) for c in _INSTANCE_COLS)
    return (ids[1], ids[0], site, *values)


def _insert_instances(conn: sqlite3.Connection, pending: list[tuple[Any, ...]]) -> None:
    if not pending:
        return
    conn.executemany(
        f"INSERT INTO instances(series_id, study_id, site, {', '.join(_INSTANCE_COLS)})"
        f" VALUES (?,?,?,{','.join('?' * len(_INSTANCE_COLS))})"
        " ON CONFLICT(sop_instance_uid, site) DO UPDATE SET object_key = excluded.object_key,"
        " size = excluded.size, crc32c = excluded.crc32c,"
        " transfer_syntax = excluded.transfer_syntax",
        pending,
    )
    pending.clear()


def _delete_instance(conn: sqlite3.Connection, site: str, sop_uid: str) -> tuple[int, int] | None:
    found = conn.execute(
        "SELECT study_id, series_id FROM instances WHERE sop_instance_uid = ? AND site = ?",
        (sop_uid, site),
    ).fetchone()
    if found is None:
        return None
    conn.execute("DELETE FROM instances WHERE sop_instance_uid = ? AND site = ?", (sop_uid, site))
    return int(found[0]), int(found[1])


def _recount(conn: sqlite3.Connection, studies: set[int], series: set[int]) -> None:
    """Counters for the touched rows; empty series and studies disappear (all retracted)."""
    for sid in series:
        conn.execute(
            "UPDATE series SET num_instances = "
            "(SELECT count(*) FROM instances WHERE series_id = ?) WHERE id = ?",
            (sid, sid),
        )
        conn.execute("DELETE FROM series WHERE id = ? AND num_instances = 0", (sid,))
    for sid in studies:
        conn.execute(
            "UPDATE studies SET"
            " num_instances = (SELECT count(*) FROM instances WHERE study_id = ?),"
            " num_series = (SELECT count(*) FROM series WHERE study_id = ?) WHERE id = ?",
            (sid, sid, sid),
        )
        conn.execute("DELETE FROM studies WHERE id = ? AND num_instances = 0", (sid,))
