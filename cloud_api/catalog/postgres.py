"""The PostgreSQL catalog: one database shared by stateless cloud API replicas.

Every replica serves searches from a connection pool (psycopg 3 + psycopg-pool, the only
modules importing them). One replica at a time applies journal objects: the poller of the
replica holding the session advisory lock `LEAD_LOCK` on its writer connection. If that
replica dies, its connection closes, PostgreSQL releases the lock and the next poll of another
replica takes it over. Each object is applied in one transaction with the cursor move in it,
under the transaction lock `APPLY_LOCK` (STOW's immediate apply on any replica takes it too),
so a replica killed mid-batch leaves nothing half-applied and an object is never applied twice
at once. A new replica only connects: it is ready in seconds, not after a rebuild.

Text columns are `COLLATE "C"` (`shared.sqldialect`): byte order like SQLite, and plain
btrees serve the prefix ranges.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from cloud_api.catalog import InstanceRef, Search, SiteCount, apply, schema, search
from shared.errors import IndexUnavailable
from shared.sqldialect import POSTGRES

# Advisory lock keys (bigint): "hpacs" in ASCII, then a small number per purpose.
LEAD_LOCK = 0x6870616373_0001
APPLY_LOCK = 0x6870616373_0002
SCHEMA_LOCK = 0x6870616373_0003
STATEMENT_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 10
READY_TIMEOUT_S = 2.0
# A rebuild grows the tables faster than autovacuum re-analyses them; with stale statistics the
# planner hash-joins whole tables per object. The applying replica analyses the catalog itself
# each time it grew by a tenth (at least this many rows).
ANALYZE_EVERY_ROWS = 50_000


class _Tx:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def load(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        with (
            self.conn.cursor() as cur,
            cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)

    def clear(self, tables: tuple[str, ...]) -> None:
        # TRUNCATE, not DELETE: temporary tables are never vacuumed, dead rows would pile up
        self.conn.execute(f"TRUNCATE {', '.join(tables)}")

    def analyze(self, tables: tuple[str, ...]) -> None:
        self.conn.execute(f"ANALYZE {', '.join(tables)}")


class PostgresCatalog:
    def __init__(self, url: str, pool_size: int = 8) -> None:
        self.url = url
        self._conninfo = url
        options = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "row_factory": dict_row, "options": options},
            open=False,
            name="hpacs-catalog",
        )
        self._writer_lock = threading.RLock()
        self._writer: psycopg.Connection[Any] | None = None
        self._leading = False
        self._since_analyze = 0
        self._analyze_at = ANALYZE_EVERY_ROWS
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
            self._migrate()
        except Exception:
            self._pool.close()
            raise

    # ---- connections ---------------------------------------------------------------------------

    def _connect_writer(self) -> psycopg.Connection[Any]:
        """The connection that applies (and holds the lead lock); made again after a failure."""
        if self._writer is None or self._writer.closed or self._writer.broken:
            if self._writer is not None:
                self._writer.close()
            self._leading = False
            # prepare_threshold=None: every apply statement is planned with its values and the
            # statistics of the moment. A prepared statement's generic plan, fixed while the
            # tables were small, scanned every copy of a site per object (6 s at 700k rows).
            conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                prepare_threshold=None,
            )
            # derived data, like the SQLite file's synchronous=OFF: a database crash can only lose
            # the last commits, each with its cursor, so those objects are applied again; the
            # commit no longer waits for the WAL flush (one fsync per journal object)
            conn.execute("SET synchronous_commit = off")
            for stmt in apply.stage_ddl(POSTGRES):
                conn.execute(stmt)
            self._writer = conn
        return self._writer

    def _query(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.OperationalError as exc:
            raise IndexUnavailable(f"the catalog database did not answer: {exc}") from exc

    def _migrate(self) -> None:
        """Create (or, for another schema version, drop and re-create) the tables, one replica
        at a time: derived data, the bucket rebuilds it."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS catalog_meta (key TEXT PRIMARY KEY, value TEXT)"
            )
            row = conn.execute("SELECT value FROM catalog_meta WHERE key = 'version'").fetchone()
            if row is not None and row["value"] == str(schema.VERSION):
                return
            for table in schema.TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            for stmt in schema.ddl("postgresql"):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO catalog_meta (key, value) VALUES ('version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(schema.VERSION),),
            )

    # ---- the Catalog protocol ------------------------------------------------------------------

    def search(self, q: Search) -> list[dict[str, Any]]:
        return search.search(q, POSTGRES, self._query)

    def instances(
        self,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        sites: Sequence[str] | None = None,
    ) -> list[InstanceRef]:
        return search.instances(
            study_uid, series_uid, sop_instance_uid, sites, POSTGRES, self._query
        )

    def apply(self, site: str, rows: list[dict[str, Any]], key: str | None = None) -> int:
        with self._writer_lock:
            conn = self._connect_writer()
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPLY_LOCK,))
                    n = apply.apply_batch(_Tx(conn), POSTGRES, site, rows, key)
                self._since_analyze += n
                if self._since_analyze >= self._analyze_at:
                    self._analyze(conn)
                return n
            except psycopg.OperationalError as exc:
                conn.close()  # a new connection (and a new lead) next time
                raise IndexUnavailable(f"the catalog database did not answer: {exc}") from exc

    def _analyze(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("ANALYZE studies, series, instances, copies, study_sites")
        row = conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'instances'").fetchone()
        self._since_analyze = 0
        self._analyze_at = max(ANALYZE_EVERY_ROWS, int((row[0] if row else 0) // 10))

    def reset(self) -> None:
        with self._writer_lock:
            conn = self._connect_writer()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPLY_LOCK,))
                conn.execute(f"TRUNCATE {', '.join(schema.TABLES)} RESTART IDENTITY")

    def try_lead(self) -> bool:
        """Hold the lead lock (session-level, on the writer connection) or learn another has it."""
        with self._writer_lock:
            try:
                conn = self._connect_writer()
                if self._leading:
                    conn.execute("SELECT 1")  # still connected, so still holding it
                    return True
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEAD_LOCK,)).fetchone()
                self._leading = bool(row and row[0])
                return self._leading
            except psycopg.OperationalError as exc:
                if self._writer is not None:
                    self._writer.close()
                self._leading = False
                raise IndexUnavailable(f"the catalog database did not answer: {exc}") from exc

    def cursors(self) -> dict[str, str]:
        rows = self._query("SELECT site, last_key FROM cursors", [])
        return {r["site"]: r["last_key"] for r in rows}

    def site_counts(self) -> list[SiteCount]:
        rows = self._query(
            "SELECT site, count(*) AS studies, sum(num_instances) AS instances FROM study_sites"
            " GROUP BY site ORDER BY site",
            [],
        )
        return [SiteCount(r["site"], int(r["studies"]), int(r["instances"] or 0)) for r in rows]

    def counts(self) -> dict[str, int]:
        return {
            t: int(self._query(f"SELECT count(*) AS n FROM {t}", [])[0]["n"])
            for t in ("studies", "series", "instances")
        }

    def check_ready(self) -> None:
        with self._pool.connection(timeout=READY_TIMEOUT_S) as conn:
            conn.execute("SELECT 1 FROM cursors LIMIT 1").fetchall()

    def close(self) -> None:
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self._pool.close()
