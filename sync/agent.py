"""The sync agent's main loop: upload, journal, evict, back up, report; one thread, one process.

Work is polled from the index (the edge is another process): with a backlog the loop runs batch
after batch; idle, it sleeps from `poll_interval_s` up to four times that (a few queries a
second at most: well under 10% of a core). When a whole batch fails transiently (the store is
down) the loop itself backs off too, so an outage costs a handful of requests, not one per row.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from shared.config import Config
from shared.errors import PacsError
from shared.health import StoreReadiness
from shared.index import Database
from shared.recall import Recaller
from shared.store import ObjectStore, open_store
from sync.backoff import retry_delay
from sync.backup import backup_if_changed
from sync.catalog import CatalogWriter
from sync.deletions import poll_deletions
from sync.evictor import Evictor
from sync.holds import sync_holds
from sync.purge import Purger, auto_purge
from sync.recovery import recover
from sync.restore_jobs import poll_restores
from sync.scrub import Scrubber
from sync.status import Status, collect
from sync.uploader import BatchStats, Uploader

log = logging.getLogger("hpacs.sync")

CATALOG_MAX_DELAY_S = 10.0  # a verified row reaches the journal within this, even mid-backlog
BACKUP_INTERVAL_S = 60.0


class AlreadyRunning(RuntimeError):
    pass


def store_for(cfg: Config) -> ObjectStore:
    s = cfg.sync
    return open_store(s.store_url, emulator_host=s.emulator_host, timeout_s=s.upload_timeout_s)


class Agent:
    def __init__(self, cfg: Config, db: Database, store: ObjectStore | None = None) -> None:
        self.cfg = cfg
        self.db = db
        self.cache_dir = Path(cfg.edge.cache_dir).resolve()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.store = store if store is not None else store_for(cfg)
        s = cfg.sync
        self.pool = ThreadPoolExecutor(s.upload_concurrency, thread_name_prefix="sync-io")
        self.uploader = Uploader(db, self.store, self.cache_dir, s, self.pool)
        self.catalog = CatalogWriter(db, self.store, s.site, s.catalog_batch)
        self.evictor = Evictor(db, self.store, self.cache_dir, s, self.pool)
        self.purger = Purger(cfg, db, self.store, self.cache_dir, self.catalog)
        # The scrub repairs damaged files from the bucket itself (one download at a time).
        self.scrub_recaller = Recaller(db, self.cache_dir, self.store, concurrency=1)
        self.scrubber = Scrubber(db, self.cache_dir, s.scrub_bytes_per_s, self.scrub_recaller)
        self.stop_event = threading.Event()
        self._scrub_thread: threading.Thread | None = None
        self._lock_file: IO[str] | None = None

    # ---- life cycle ---------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """One agent per index: a second one would double every upload."""
        path = Path(self.cfg.edge.data_dir) / "sync.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")  # noqa: SIM115 - held for the life of the agent
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            fh.close()
            raise AlreadyRunning(f"another hpacs-sync holds {path}") from exc
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_file = fh

    def close(self) -> None:
        self.stop_event.set()
        if self._scrub_thread is not None:
            self._scrub_thread.join()
            self._scrub_thread = None
        self.scrub_recaller.close()
        self.pool.shutdown(wait=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def stop(self) -> None:
        self.stop_event.set()

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        self.acquire_lock()
        recover(self.db, self.cache_dir)
        s = self.cfg.sync
        log.info(
            "sync agent started site=%s store=%s concurrency=%d",
            s.site,
            self.store.url,
            s.upload_concurrency,
        )
        self.start_scrub()
        # A bucket not there yet (its emulator starts after us) is waited for, never a reason
        # to exit or to fail uploads: one WARNING, then one INFO once it answers.
        StoreReadiness(self.store, log).wait(self.stop_event)
        next_evict = next_status = next_backup = next_restore = next_purge = 0.0
        next_auto_purge = time.monotonic() + 60.0  # not in the first minute after a start
        idle_wait = s.poll_interval_s
        outage_batches = 0
        while not self.stop_event.is_set():
            stats = self._upload_batch()
            now = time.monotonic()
            self._maybe_journal(stats)
            if now >= next_evict:
                self._guarded("eviction", self.evictor.run)
                next_evict = now + s.evict_interval_s
            if now >= next_backup:
                self._guarded(
                    "config backup",
                    lambda: backup_if_changed(self.db, self.store, s.site, self.cfg.source_path),
                )
                next_backup = now + BACKUP_INTERVAL_S
            if now >= next_restore:
                self._guarded(
                    "restore requests", lambda: poll_restores(self.cfg, self.db, self.store)
                )
                self._guarded(
                    "deletion requests", lambda: poll_deletions(self.cfg, self.db, self.store)
                )
                next_restore = now + self.cfg.restore.poll_interval_s
            if now >= next_purge:
                # the first pass finishes purges a crash interrupted (sync/purge.py)
                self._guarded("purge", self.purger.run)
                self._guarded("bucket holds", lambda: sync_holds(self.db, self.store))
                next_purge = now + self.cfg.retention.purge_interval_s
            if self.cfg.retention.auto_purge and now >= next_auto_purge:
                self._guarded("auto purge", lambda: auto_purge(self.cfg, self.db, self.cache_dir))
                next_auto_purge = now + self.cfg.retention.auto_purge_interval_s
            if now >= next_status:
                log.info("status %s", self.status().log_fields())
                next_status = now + s.status_log_interval_s
            if stats.claimed and stats.transient == stats.claimed:
                outage_batches += 1
                wait = retry_delay(outage_batches, s.backoff_initial_s, s.backoff_max_s)
            elif stats.claimed:
                outage_batches, idle_wait, wait = 0, s.poll_interval_s, 0.0
            else:
                wait, idle_wait = idle_wait, min(idle_wait * 2, s.poll_interval_s * 4)
            if wait:
                self.stop_event.wait(wait)
        self._guarded("final catalog flush", self.catalog.flush)
        log.info("sync agent stopped")

    def start_scrub(self) -> None:
        """The background scrub in its own thread (sync.scrub_bytes_per_s; 0: not started)."""
        if self.cfg.sync.scrub_bytes_per_s <= 0 or self._scrub_thread is not None:
            return
        self._scrub_thread = threading.Thread(target=self._scrub, name="sync-scrub", daemon=True)
        self._scrub_thread.start()

    def _scrub(self) -> None:
        try:
            self.scrubber.run(self.stop_event)
        except Exception:  # the agent keeps uploading; the scrub says why it stopped
            log.exception("scrub stopped")

    def _upload_batch(self) -> BatchStats:
        try:
            return self.uploader.run_batch()
        except PacsError as exc:
            log.error("upload batch failed error=%s", exc)
            return BatchStats()

    def _maybe_journal(self, stats: BatchStats) -> None:
        due = time.monotonic() - self.catalog.last_flush_at >= CATALOG_MAX_DELAY_S
        if stats.claimed and not due and self.catalog.pending() < self.cfg.sync.catalog_batch:
            return
        if self.catalog.pending():
            self._guarded("catalog", self.catalog.flush)

    def _guarded(self, what: str, fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except PacsError as exc:
            log.warning("%s failed, will retry error=%s", what, exc)

    def status(self) -> Status:
        rate = self.cfg.sync.scrub_bytes_per_s
        return collect(
            self.db, self.evictor.usage(), self.catalog.pending(), scrub_bytes_per_s=rate
        )

    def drain(self, timeout_s: float = 60.0) -> None:
        """Run batches until nothing is due (tests and benchmarks; the loop does this forever)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.uploader.run_batch().claimed:
                break
        self.catalog.flush()
