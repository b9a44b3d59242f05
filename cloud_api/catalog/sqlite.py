"""The SQLite catalog: a file per replica under `cloud.data_dir`, the embedded default.

Derived data: the writer runs with `synchronous=OFF` (a crash can only cost a rebuild) and a
schema of another version is dropped and rebuilt from the bucket. One writer connection behind
a lock, one reader per thread, WAL, like `shared.index.Database`; the stage tables of
`apply.py` are temporary tables of the writer connection.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloud_api.catalog import InstanceRef, Search, SiteCount, apply, schema, search
from shared import health
from shared.index import connect, transaction
from shared.sqldialect import SQLITE

READY_TIMEOUT_S = 2.0
# Planner statistics (ANALYZE, sampled): without them SQLite answered ModalitiesInStudy by
# walking every MR series per study (3.3 s at 1M instances; 27 ms with them).
ANALYSIS_LIMIT = 400
ANALYZE_EVERY_ROWS = 10_000
WRITER_CACHE_KIB = 256 * 1024


class _Tx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.conn.execute(sql, params).fetchall()]

    def load(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        if rows:
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
            self.conn.executemany(sql, rows)

    def clear(self, tables: tuple[str, ...]) -> None:
        for t in tables:
            self.conn.execute(f"DELETE FROM {t}")

    def analyze(self, tables: tuple[str, ...]) -> None:
        pass  # SQLite's planner already prefers the catalog's indexes for these joins


class SqliteCatalog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite://{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = connect(self.path)
        self._writer.execute("PRAGMA synchronous=OFF")
        self._writer.execute("PRAGMA foreign_keys=OFF")
        # stage tables in memory; a page cache that holds the UID indexes' hot pages while a
        # rebuild inserts random UIDs (the 2 MB default thrashes past ~100k instances)
        self._writer.execute("PRAGMA temp_store=MEMORY")
        self._writer.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        self._migrate()
        for stmt in apply.stage_ddl(SQLITE):
            self._writer.execute(stmt)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._since_analyze = 0
        self._analyze_at = ANALYZE_EVERY_ROWS
        self._analyze()

    def _migrate(self) -> None:
        version = self._writer.execute("PRAGMA user_version").fetchone()[0]
        if version == schema.VERSION:
            return
        with transaction(self._writer) as conn:
            if version != 0:  # derived data: another schema is simply rebuilt
                for table in (*schema.TABLES, "sites"):
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
            for stmt in schema.ddl("sqlite"):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={schema.VERSION}")

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _query(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        return [dict(r) for r in self._reader().execute(sql, params).fetchall()]

    def search(self, q: Search) -> list[dict[str, Any]]:
        return search.search(q, SQLITE, self._query)

    def instances(
        self,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        sites: Sequence[str] | None = None,
    ) -> list[InstanceRef]:
        return search.instances(study_uid, series_uid, sop_instance_uid, sites, SQLITE, self._query)

    def apply(self, site: str, rows: list[dict[str, Any]], key: str | None = None) -> int:
        with self._lock:
            with transaction(self._writer) as conn:
                n = apply.apply_batch(_Tx(conn), SQLITE, site, rows, key)
            self._since_analyze += n
            if self._since_analyze >= self._analyze_at:
                self._analyze()
        return n

    def _analyze(self) -> None:
        """Refresh the statistics once the catalog grew by a tenth (at least 10k rows)."""
        with self._lock:
            self._writer.execute(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")
            self._writer.execute("ANALYZE main")  # not the stage tables: their plans are right
            total = self._writer.execute("SELECT max(id) FROM instances").fetchone()[0] or 0
            self._since_analyze = 0
            self._analyze_at = max(ANALYZE_EVERY_ROWS, total // 10)

    def reset(self) -> None:
        with self._lock, transaction(self._writer) as conn:
            for table in schema.TABLES:
                conn.execute(f"DELETE FROM {table}")

    def try_lead(self) -> bool:
        return True  # the file is this replica's own

    def cursors(self) -> dict[str, str]:
        rows = self._query("SELECT site, last_key FROM cursors", [])
        return {r["site"]: r["last_key"] for r in rows}

    def site_counts(self) -> list[SiteCount]:
        rows = self._query(
            "SELECT site, count(*) AS studies, sum(num_instances) AS instances FROM study_sites"
            " GROUP BY site ORDER BY site",
            [],
        )
        return [SiteCount(r["site"], r["studies"], r["instances"] or 0) for r in rows]

    def counts(self) -> dict[str, int]:
        return {
            t: self._query(f"SELECT count(*) AS n FROM {t}", [])[0]["n"]
            for t in ("studies", "series", "instances")
        }

    def check_ready(self) -> None:
        health.index_writable(self.path, READY_TIMEOUT_S)

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._lock:
            self._writer.close()
