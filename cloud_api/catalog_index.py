"""The cloud API's query index: a local SQLite file derived only from `catalog/<site>/` objects.

Nothing else feeds it, so deleting the file and restarting rebuilds the same answers, and any
number of replicas can run side by side on one bucket, each with its own file. A cursor per site
(the last catalog key applied) lets a poll list only newer objects (`start_offset`).

All methods are synchronous; the app calls them from worker threads. One writer connection
(behind a lock), one reader connection per thread, WAL, like `shared.index.Database`. The file is
derived data, so the writer runs with `synchronous=OFF`: a crash can only cost a rebuild.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.catalog import CatalogRow, decode_batch
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
                for info in store.list(catalog_prefix(site), start_offset=last):
                    if info.key <= last:
                        continue
                    with store.open(info.key) as fh:
                        data = fh.read()
                    rows = decode_batch(data)
                    self.apply(site, rows, info.key)
                    result.objects += 1
                    result.rows += len(rows)
                    last = info.key
        result.seconds = time.monotonic() - t0
        return result

    def apply(self, site: str, rows: Iterable[CatalogRow], key: str | None = None) -> None:
        """Apply one catalog object's rows (idempotent), then move the site's cursor to `key`."""
        with self.write() as conn:
            touched_studies: set[int] = set()
            touched_series: set[int] = set()
            n = 0
            known: dict[str, int] = {}  # study and series UID -> row id, within this object
            for row in rows:
                n += 1
                if row.deleted:
                    ids = _delete_instance(conn, site, row.header.sop_instance_uid)
                else:
                    ids = _upsert_instance(conn, site, row, known)
                if ids:
                    touched_studies.add(ids[0])
                    touched_series.add(ids[1])
            _recount(conn, touched_studies, touched_series)
            if key is not None:
                conn.execute(
                    "INSERT INTO cursors(site, last_key, rows) VALUES (?,?,?) "
                    "ON CONFLICT(site) DO UPDATE SET last_key = max(last_key, excluded.last_key), "
                    "rows = rows + excluded.rows",
                    (site, key, n),
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


def _upsert_instance(
    conn: sqlite3.Connection, site: str, row: CatalogRow, known: dict[str, int]
) -> tuple[int, int]:
    h = row.header
    study_id = known.get(h.study_uid)
    study = (
        (study_id,)
        if study_id
        else conn.execute(
            "SELECT id FROM studies WHERE study_uid = ? AND site = ?", (h.study_uid, site)
        ).fetchone()
    )
    if study is None:
        study_id = conn.execute(
            "INSERT INTO studies(site, study_uid, patient_id, issuer_of_patient_id, patient_name,"
            " patient_name_norm, patient_birth_date, patient_sex, study_date, study_time,"
            " accession_number, study_id, study_description, referring_physician,"
            " specific_character_set) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                site,
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
                h.specific_character_set,
            ),
        ).lastrowid
    else:
        study_id = study[0]
    known[h.study_uid] = int(study_id or 0)
    series_id = known.get(h.series_uid)
    series = (
        (series_id,)
        if series_id
        else conn.execute(
            "SELECT id FROM series WHERE series_uid = ? AND site = ?", (h.series_uid, site)
        ).fetchone()
    )
    if series is None:
        series_id = conn.execute(
            "INSERT INTO series(study_id, site, series_uid, modality, series_number,"
            " series_description, body_part, series_date, series_time) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                study_id,
                site,
                h.series_uid,
                h.modality,
                h.series_number,
                h.series_description,
                h.body_part,
                h.series_date,
                h.series_time,
            ),
        ).lastrowid
    else:
        series_id = series[0]
    known[h.series_uid] = int(series_id or 0)
    conn.execute(
        "INSERT INTO instances(series_id, study_id, site, sop_instance_uid, sop_class_uid,"
        " instance_number, rows, columns, number_of_frames, transfer_syntax, object_key, size,"
        " crc32c, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT(sop_instance_uid, site) DO UPDATE SET object_key = excluded.object_key,"
        " size = excluded.size, crc32c = excluded.crc32c,"
        " transfer_syntax = excluded.transfer_syntax",
        (
            series_id,
            study_id,
            site,
            h.sop_instance_uid,
            h.sop_class_uid,
            h.instance_number,
            h.rows,
            h.columns,
            h.number_of_frames,
            h.transfer_syntax,
            row.object_key,
            row.size,
            row.crc32c,
            row.received_at,
        ),
    )
    return int(study_id or 0), int(series_id or 0)


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
