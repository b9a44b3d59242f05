"""The SQLite index: schema, numbered migrations, and the connection discipline.

WAL, one writer connection per process guarded by a lock, short `BEGIN IMMEDIATE`
transactions with no network I/O inside, readers on per-thread connections. The edge node and
the sync agent are two processes on the same file; SQLite's busy timeout plus `write()`'s
retry loop handle their contention.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MIGRATIONS: list[str] = [
    # 1: studies, series, instances, nodes, events, settings
    """
    CREATE TABLE studies (
        id INTEGER PRIMARY KEY,
        study_uid TEXT NOT NULL UNIQUE,
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
        num_series INTEGER NOT NULL DEFAULT 0,
        num_instances INTEGER NOT NULL DEFAULT 0,
        pinned INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_access REAL NOT NULL
    );
    CREATE INDEX studies_patient_id ON studies(patient_id);
    CREATE INDEX studies_patient_name_norm ON studies(patient_name_norm);
    CREATE INDEX studies_study_date ON studies(study_date);
    CREATE INDEX studies_accession_number ON studies(accession_number);
    CREATE INDEX studies_last_access ON studies(last_access);

    CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        series_uid TEXT NOT NULL UNIQUE,
        study_id INTEGER NOT NULL REFERENCES studies(id),
        modality TEXT NOT NULL DEFAULT '',
        series_number INTEGER,
        series_description TEXT NOT NULL DEFAULT '',
        body_part TEXT NOT NULL DEFAULT '',
        series_date TEXT NOT NULL DEFAULT '',
        series_time TEXT NOT NULL DEFAULT '',
        num_instances INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE INDEX series_study_id ON series(study_id);
    CREATE INDEX series_modality ON series(modality);

    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        sop_instance_uid TEXT NOT NULL UNIQUE,
        series_id INTEGER NOT NULL REFERENCES series(id),
        study_id INTEGER NOT NULL REFERENCES studies(id),
        sop_class_uid TEXT NOT NULL,
        instance_number INTEGER,
        rows INTEGER,
        columns INTEGER,
        number_of_frames INTEGER,
        specific_character_set TEXT NOT NULL DEFAULT '',
        transfer_syntax TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        crc32c TEXT NOT NULL,
        received_at REAL NOT NULL,
        calling_ae TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL DEFAULT 'dimse',
        state TEXT NOT NULL DEFAULT 'cached',
        state_changed_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        object_key TEXT NOT NULL DEFAULT '',
        synced_at REAL,
        last_access REAL NOT NULL
    );
    CREATE INDEX instances_series_id ON instances(series_id);
    CREATE INDEX instances_study_id ON instances(study_id);
    CREATE INDEX instances_state ON instances(state, next_attempt_at);

    CREATE TABLE nodes (
        ae_title TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        tls INTEGER NOT NULL DEFAULT 0,
        permissions TEXT NOT NULL,
        max_associations INTEGER NOT NULL DEFAULT 0,
        source TEXT NOT NULL DEFAULT 'cli',
        updated_at REAL NOT NULL
    );

    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        calling_ae TEXT NOT NULL DEFAULT '',
        peer TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_kind_at ON events(kind, at);

    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: the routing queue (edge/forwarder.py): one row per instance x route x destination,
    # retry state in the row (invariant 6); UNIQUE so a duplicate ingest never queues twice.
    """
    CREATE TABLE route_jobs (
        id INTEGER PRIMARY KEY,
        route TEXT NOT NULL,
        destination TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        stable_after_s REAL NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 10,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        sent_at REAL,
        UNIQUE(route, destination, sop_instance_uid)
    );
    CREATE INDEX route_jobs_due ON route_jobs(state, destination, next_attempt_at);
    CREATE INDEX route_jobs_study ON route_jobs(study_uid);
    """,
    # 3: the sync agent's catalog journal (sync/catalog.py): which catalog object a row went
    # into (0: not yet), so a crash between upload and journal loses no catalog row.
    """
    ALTER TABLE instances ADD COLUMN catalog_seq INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX instances_catalog_seq ON instances(catalog_seq, state);
    """,
    # 4: /metrics and the console read count and bytes per state at every scrape: a covering
    # index makes that an index-only scan, and the backlog's oldest received_at an index-only
    # search (bench/metrics_scrape.py, 500k instances: /metrics ~110 ms, was 0.8-2.3 s).
    """
    CREATE INDEX instances_state_size ON instances(state, size, received_at);
    """,
    # 5: administration from the console (issue 10). Nodes keyed by (ae_title, source), so
    # `[[nodes]]` rows (source 'config') and registry rows (CLI, console, restore) never
    # overwrite each other (shared/registry.py); routes edited in the console (edge/routestore.py)
    # beside the config's; local console users (edge/users.py, argon2 hashes; `epoch` moves on
    # a password change or removal and ends that user's sessions).
    """
    CREATE TABLE nodes_v5 (
        ae_title TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('config', 'registry')),
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        tls INTEGER NOT NULL DEFAULT 0,
        permissions TEXT NOT NULL,
        max_associations INTEGER NOT NULL DEFAULT 0,
        added_by TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        PRIMARY KEY (ae_title, source)
    );
    INSERT INTO nodes_v5 SELECT ae_title,
        CASE WHEN source = 'config' THEN 'config' ELSE 'registry' END,
        host, port, tls, permissions, max_associations,
        CASE WHEN source = 'config' THEN '' ELSE source END, updated_at FROM nodes;
    DROP TABLE nodes;
    ALTER TABLE nodes_v5 RENAME TO nodes;

    CREATE TABLE routes (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        updated_at REAL NOT NULL,
        updated_by TEXT NOT NULL DEFAULT ''
    );

    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        epoch INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 6: Storage Commitment reports (edge/commitqueue.py): one row per verified request, kept
    # until the N-EVENT-REPORT was answered; retry state in the row (invariant 6).
    """
    CREATE TABLE commitment_reports (
        id INTEGER PRIMARY KEY,
        calling_ae TEXT NOT NULL,
        transaction_uid TEXT NOT NULL,
        verdicts TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE INDEX commitment_reports_due ON commitment_reports(state, next_attempt_at);
    """,
    # 7: deletion, retention and legal holds (issue 10; shared/deletion.py, sync/purge.py).
    # A deleted instance keeps its row: `deleted_at` starts its grace, `deleted_from` is the
    # state an undelete returns it to. Study/series counters count visible instances only.
    # Holds on a study (value: Study Instance UID) or a patient (value: PatientID) block every
    # deletion and purge while `released_at` is NULL; `bucket` says how far the sync agent
    # mirrored the hold onto the objects (pending, held, unsupported, released) and
    # `bucket_at` up to which `synced_at` the covered objects were held.
    """
    ALTER TABLE instances ADD COLUMN deleted_at REAL;
    ALTER TABLE instances ADD COLUMN deleted_from TEXT NOT NULL DEFAULT '';
    CREATE TABLE holds (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('study', 'patient')),
        value TEXT NOT NULL,
        reason TEXT NOT NULL,
        placed_by TEXT NOT NULL DEFAULT '',
        placed_at REAL NOT NULL,
        released_by TEXT NOT NULL DEFAULT '',
        released_at REAL,
        release_reason TEXT NOT NULL DEFAULT '',
        bucket TEXT NOT NULL DEFAULT 'pending',
        bucket_at REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX holds_value ON holds(kind, value);
    """,
]

# Attributes (shared.attributes) with an upper-cased `<column>_norm` copy in this schema: only
# PatientName (migration 1), so only names match case-insensitively in the edge's C-FIND.
NORMALISED = frozenset({"PatientName"})

BUSY_TIMEOUT_S = 30.0


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection with the house pragmas; autocommit mode, transactions are explicit."""
    conn = sqlite3.connect(
        str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; returns the schema version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


@contextmanager
def transaction(conn: sqlite3.Connection, attempts: int = 5) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` ... `COMMIT`, rolled back on error; retries a busy BEGIN."""
    for attempt in range(attempts):
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class Database:
    """One process's view of the index: a locked writer and per-thread readers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = connect(self.path)
        migrate(self._writer)
        self._lock = threading.RLock()
        self._local = threading.local()
        # (owning thread, its reader): pynetdicom runs every association in a new thread, so
        # readers of finished threads are closed as new ones open (else one fd leak each).
        self._readers: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._readers_lock = threading.Lock()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """The process's single writer inside one immediate transaction."""
        with self._lock, transaction(self._writer) as conn:
            yield conn

    def set_synchronous(self, mode: str) -> None:
        """PRAGMA synchronous of this process's writer ("FULL" or "NORMAL"); see edge config."""
        if mode.upper() not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {mode!r}")
        with self._lock:
            self._writer.execute(f"PRAGMA synchronous={mode.upper()}")

    def reader(self) -> sqlite3.Connection:
        """A connection for reads, one per thread (WAL readers never block the writer)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._readers_lock:
                self._reap_readers()
                self._readers.append((threading.current_thread(), conn))
        return conn

    def _reap_readers(self) -> None:
        """Close the readers of threads that have ended (caller holds _readers_lock)."""
        alive = []
        for thread, conn in self._readers:
            if thread.is_alive():
                alive.append((thread, conn))
            else:
                conn.close()
        self._readers = alive

    def close(self) -> None:
        with self._readers_lock:
            for _thread, conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._lock:
            self._writer.close()

    def get_setting(self, key: str, default: str = "") -> str:
        row = self.reader().execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_setting(self, conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute(
            "INSERT INTO settings(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
