"""Executes the eviction policy (`shared.eviction`): whole studies, verified copies only.

Per victim study: `synced -> evicting` for all its instances in one transaction (abandoned if
the study was touched or any instance is not synced), a `head` of each object to re-verify the
cloud copy (invariant 2: a missing or different object sends the instance back to `cached` for
upload instead), a last check that no retrieve touched the study, then the files are deleted and
the rows go `evicting -> evicted`; every query attribute stays in the index (invariant 3).
A retrieve that races an eviction never sees half a file: files are unlinked whole, each only
by winning `evicting -> evicted` in the transaction that unlinks it; a retrieve of an
`evicting` row cancels the eviction instead (`evicting -> synced`, edge/locate.py) and serves
the file, which then stays. A file being
recalled is never deleted: recall works on `evicted -> recalling` rows, which this never claims.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import ConfigError, SyncConfig
from shared.errors import PacsError
from shared.eviction import Plan, StudyUsage, Watermark, parse_watermark, plan_eviction
from shared.index import Database
from shared.keys import is_revision_key
from shared.lifecycle import LOCAL_STATES, State, transition
from shared.store import ObjectStore

log = logging.getLogger("hpacs.sync.evict")

_LOCAL_SQL = ",".join(f"'{s.value}'" for s in LOCAL_STATES)
# instances that block eviction of their study: anything not synced and not already gone
# (a lost instance has no file and nothing to upload: it does not hold its study in the cache)
_NOT_BLOCKING = (State.SYNCED, State.EVICTED, State.LOST)
_BLOCKING_SQL = ",".join(f"'{s.value}'" for s in State if s not in _NOT_BLOCKING)


@dataclass(frozen=True)
class Watermarks:
    high: Watermark
    low: Watermark

    @classmethod
    def from_config(cls, cfg: SyncConfig) -> Watermarks:
        high = parse_watermark(cfg.cache_high_watermark)
        low = parse_watermark(cfg.cache_low_watermark)
        if high.percent != low.percent:
            raise ConfigError(
                "sync.cache_low_watermark", "must be a percent when the high one is (or bytes)"
            )
        if low.value > high.value:
            raise ConfigError("sync.cache_low_watermark", "must not exceed the high watermark")
        return cls(high, low)


@dataclass
class Usage:
    cache_bytes: int  # bytes of instances in the cache, from the index
    disk_total: int
    disk_used: int
    high_bytes: int
    low_bytes: int
    percent: bool

    @property
    def usage(self) -> int:
        """What the watermarks are compared with: the disk for percents, the cache for bytes."""
        return self.disk_used if self.percent else self.cache_bytes


@dataclass(frozen=True)
class Claimed:
    id: int
    path: str
    size: int
    crc32c: str
    object_key: str


@dataclass
class EvictionReport:
    plan: Plan | None = None
    studies_evicted: int = 0
    instances_evicted: int = 0
    bytes_freed: int = 0
    abandoned: int = 0
    reuploads: int = 0
    errors: list[str] = field(default_factory=list)


def measure_usage(db: Database, cache_dir: Path, marks: Watermarks) -> Usage:
    cache_bytes = int(
        db.reader()
        .execute(f"SELECT coalesce(sum(size), 0) FROM instances WHERE state IN ({_LOCAL_SQL})")
        .fetchone()[0]
    )
    du = shutil.disk_usage(cache_dir)
    return Usage(
        cache_bytes=cache_bytes,
        disk_total=du.total,
        disk_used=du.total - du.free,
        high_bytes=marks.high.bytes_of(du.total),
        low_bytes=marks.low.bytes_of(du.total),
        percent=marks.high.percent,
    )


class Evictor:
    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        cache_dir: Path,
        cfg: SyncConfig,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.db = db
        self.store = store
        self.cache_dir = cache_dir
        self.cfg = cfg
        self.pool = pool
        self.marks = Watermarks.from_config(cfg)

    def usage(self) -> Usage:
        return measure_usage(self.db, self.cache_dir, self.marks)

    def candidates(self) -> list[StudyUsage]:
        rows = self.db.reader().execute(
            "SELECT s.id, s.last_access, s.updated_at, s.pinned, "
            f"sum(CASE WHEN i.state IN ({_LOCAL_SQL}) THEN i.size ELSE 0 END) AS local_bytes, "
            f"sum(CASE WHEN i.state IN ({_BLOCKING_SQL}) THEN 1 ELSE 0 END) AS unsynced "
            "FROM studies s JOIN instances i ON i.study_id = s.id GROUP BY s.id "
            "HAVING local_bytes > 0"
        )
        return [
            StudyUsage(
                r["id"],
                r["local_bytes"],
                r["last_access"],
                r["updated_at"],
                bool(r["pinned"]),
                r["unsynced"],
            )
            for r in rows
        ]

    def run(self, now: float | None = None) -> EvictionReport:
        """One pass: plan from the current usage, then evict the victims in order."""
        now = time.time() if now is None else now
        use = self.usage()
        cands = self.candidates()
        plan = plan_eviction(
            cands,
            use.usage,
            use.high_bytes,
            use.low_bytes,
            now,
            self.cfg.min_cache_age_s,
        )
        report = EvictionReport(plan=plan)
        if not plan.victims:
            if use.usage > use.high_bytes:
                log.warning(
                    "cache above the high watermark and nothing may be evicted usage=%d high=%d "
                    "skipped=%s",
                    use.usage,
                    use.high_bytes,
                    plan.skipped,
                )
            return report
        access = {s.study_id: s.last_access for s in cands}
        for study_id in plan.victims:
            try:
                self.evict_study(study_id, access.get(study_id, 0.0), report)
            except PacsError as exc:  # the store is down: stop this pass, nothing deleted
                report.errors.append(str(exc))
                log.warning("eviction pass stopped study_id=%d error=%s", study_id, exc)
                break
        log.info(
            "eviction pass studies=%d instances=%d freed_bytes=%d abandoned=%d reuploads=%d",
            report.studies_evicted,
            report.instances_evicted,
            report.bytes_freed,
            report.abandoned,
            report.reuploads,
        )
        return report

    # ---- one study ------------------------------------------------------------------------
    def evict_study(self, study_id: int, seen_access: float, report: EvictionReport) -> None:
        claimed = self._claim(study_id, seen_access)
        if not claimed:
            report.abandoned += 1
            return
        try:
            verified = list(self.pool.map(self._verified, claimed))
        except BaseException:
            self._release(claimed)
            raise
        bad = [r for r, ok in zip(claimed, verified, strict=True) if not ok]
        if bad:
            self._reupload(bad)
            report.reuploads += len(bad)
            self._release([r for r in claimed if r not in bad])
            report.abandoned += 1
            return
        with self.db.write() as conn:
            row = conn.execute(
                "SELECT last_access FROM studies WHERE id = ?", (study_id,)
            ).fetchone()
            touched = row is None or row[0] > seen_access
            gone = [] if touched else self._delete(conn, claimed)
        if touched:
            self._release(claimed)
            report.abandoned += 1
            return
        report.studies_evicted += 1
        report.instances_evicted += len(gone)
        report.bytes_freed += sum(r.size for r in gone)

    def _delete(self, conn: sqlite3.Connection, claimed: list[Claimed]) -> list[Claimed]:
        """`evicting -> evicted`, then the unlink, per instance and inside the caller's
        transaction: a retrieve that cancelled the eviction (`evicting -> synced`) first wins
        the compare-and-set, and its file is never deleted while it is being served. A crash
        after an unlink leaves `evicting` without a file, which recovery completes."""
        gone = []
        for r in claimed:
            if not transition(conn, r.id, State.EVICTING, State.EVICTED):
                continue
            try:
                os.unlink(self.cache_dir / r.path)
            except FileNotFoundError:
                pass
            gone.append(r)
        return gone

    def _claim(self, study_id: int, seen_access: float) -> list[Claimed]:
        with self.db.write() as conn:
            study = conn.execute(
                "SELECT last_access, pinned FROM studies WHERE id = ?", (study_id,)
            ).fetchone()
            if study is None or study["pinned"] or study["last_access"] > seen_access:
                return []
            blocking = conn.execute(
                f"SELECT count(*) FROM instances WHERE study_id = ? AND state IN ({_BLOCKING_SQL})",
                (study_id,),
            ).fetchone()[0]
            if blocking:
                return []
            found = conn.execute(
                "SELECT id, path, size, crc32c, object_key FROM instances "
                "WHERE study_id = ? AND state = ?",
                (study_id, State.SYNCED.value),
            ).fetchall()
            claimed = []
            for r in found:
                if transition(conn, r["id"], State.SYNCED, State.EVICTING):
                    claimed.append(
                        Claimed(r["id"], r["path"], r["size"], r["crc32c"], r["object_key"])
                    )
            return claimed

    def _verified(self, r: Claimed) -> bool:
        info = self.store.head(str(r.object_key))
        return info is not None and info.crc32c == r.crc32c and info.size == r.size

    def _release(self, claimed: list[Claimed]) -> None:
        with self.db.write() as conn:
            for r in claimed:
                transition(conn, r.id, State.EVICTING, State.SYNCED)

    def _reupload(self, bad: list[Claimed]) -> None:
        """The cloud copy is gone or different: keep the file and upload it again."""
        with self.db.write() as conn:
            for r in bad:
                rid = r.id
                if transition(conn, rid, State.EVICTING, State.SYNCED):
                    transition(
                        conn,
                        rid,
                        State.SYNCED,
                        State.CACHED,
                        # a corrected instance goes back to its revision key, not the original's
                        object_key=r.object_key if is_revision_key(r.object_key) else "",
                        attempts=0,
                        next_attempt_at=0,
                        last_error="cloud copy missing or different at eviction; re-uploading",
                    )
                log.error("cloud copy failed verification at eviction object_key=%s", r.object_key)
