"""The purge: deleted instances whose grace is over lose their bucket objects and cache files.

A pass, in the sync agent's loop every `retention.purge_interval_s`:
1. **claim** up to `retention.purge_batch` rows `deleted` for longer than
   `retention.delete_grace_days` and under no legal hold (shared/deletion.py `due_for_purge`):
   `deleted -> purging` with `catalog_seq = 0`, one transaction. From here an undelete is
   refused (the CAS from `deleted` fails): the purge only goes forward.
2. **journal** the purge tombstones (the catalog writer: `purging` rows are journalled with
   `purged: true`), so the cloud catalog and any restore drop the instances before their bytes
   go; a restore in between never promises an object that is about to disappear.
3. **delete** each journalled row's object (NotFound: already gone) and cache file (a kept
   file of a row deleted before its upload, or one a crash left behind), then
   `purging -> purged` per chunk.
A crash anywhere leaves rows `deleted` (untouched) or `purging`; the first pass after a
restart finishes every `purging` row before claiming new ones (shared.lifecycle
`PURGE_RESUMED`): no instance is half purged, and none comes back promising deleted bytes.
Each purged study is an audit event (actor `sync-agent`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import Config
from shared.deletion import Actor, Target, delete, due_for_purge
from shared.errors import NotFound, PacsError, PermanentStoreError
from shared.expiry import expired
from shared.index import Database
from shared.keys import parse_instance_object
from shared.lifecycle import State, transition
from shared.siteaudit import SiteAudit
from shared.store import ObjectStore
from sync.catalog import CatalogWriter

log = logging.getLogger("hpacs.sync.purge")

ACTOR = "sync-agent"
AUTO_ACTOR = "retention"  # retention.auto_purge: not an admin, so it never overrides anything
CHUNK = 50  # rows marked purged per transaction


@dataclass
class PurgeReport:
    claimed: int = 0
    purged: int = 0
    objects_deleted: int = 0
    files_removed: int = 0
    studies: dict[str, int] = field(default_factory=dict)  # study UID -> instances purged


class Purger:
    def __init__(
        self,
        cfg: Config,
        db: Database,
        store: ObjectStore,
        cache_dir: Path,
        catalog: CatalogWriter,
        *,
        clock: Callable[[], float] = time.time,
        audit: Callable[[], SiteAudit] | None = None,
    ) -> None:
        self.cfg = cfg
        self.db = db
        self.store = store
        self.cache_dir = cache_dir
        self.catalog = catalog
        self.clock = clock
        self._audit = audit or (lambda: SiteAudit(cfg))

    @property
    def grace_s(self) -> float:
        return self.cfg.retention.delete_grace_days * 86400.0

    def run(self) -> PurgeReport:
        """Finish interrupted purges, then claim and purge due rows batch by batch."""
        rep = PurgeReport()
        self.finish(rep)
        batch = self.cfg.retention.purge_batch
        while True:
            claimed = self._claim(batch)
            rep.claimed += claimed
            if not claimed:
                break
            self.finish(rep)
            if claimed < batch:
                break
        if rep.purged:
            self._record(rep)
            log.info(
                "purged instances=%d studies=%d objects_deleted=%d files_removed=%d",
                rep.purged,
                len(rep.studies),
                rep.objects_deleted,
                rep.files_removed,
            )
        return rep

    def _claim(self, limit: int) -> int:
        cutoff = self.clock() - self.grace_s
        with self.db.write() as conn:
            ids = due_for_purge(conn, cutoff, limit)
            return sum(
                transition(conn, iid, State.DELETED, State.PURGING, catalog_seq=0) for iid in ids
            )

    def _purging(self) -> list[tuple[int, str, str, str, int]]:
        return [
            (int(r[0]), r[1], r[2], r[3], int(r[4]))
            for r in self.db.reader().execute(
                "SELECT i.id, s.study_uid, i.object_key, i.path, i.catalog_seq FROM instances i "
                "JOIN studies s ON s.id = i.study_id WHERE i.state = ? ORDER BY i.id",
                (State.PURGING.value,),
            )
        ]

    def finish(self, rep: PurgeReport | None = None) -> PurgeReport:
        """Every `purging` row: tombstone journalled, then its bytes deleted, then `purged`."""
        rep = rep if rep is not None else PurgeReport()
        rows = self._purging()
        if any(key and not seq for _i, _s, key, _p, seq in rows):
            self.catalog.flush()  # store errors propagate: the next pass tries again
            rows = self._purging()
        ready = [r for r in rows if not r[2] or r[4]]  # nothing in the cloud, or tombstoned
        for i in range(0, len(ready), CHUNK):
            chunk = ready[i : i + CHUNK]
            done = [r for r in chunk if self._delete_bytes(r, rep)]
            with self.db.write() as conn:
                for iid, study, *_ in done:
                    if transition(conn, iid, State.PURGING, State.PURGED):
                        rep.purged += 1
                        rep.studies[study] = rep.studies.get(study, 0) + 1
        return rep

    def _delete_bytes(self, row: tuple[int, str, str, str, int], rep: PurgeReport) -> bool:
        _iid, _study, key, relpath, _seq = row
        for version in self._versions(key):
            try:
                self.store.delete(version)
                rep.objects_deleted += 1
            except NotFound:
                pass  # deleted before a crash, or never there
            except PermanentStoreError as exc:  # e.g. a hold left on the object in the bucket
                log.error("purge could not delete key=%s error=%s hint=%s", version, exc, exc.hint)
                return False
        try:
            os.unlink(self.cache_dir / relpath)
            rep.files_removed += 1
        except FileNotFoundError:
            pass
        return True

    def _versions(self, key: str) -> list[str]:
        """Every object of the row's instance: the key it names plus, for a corrected instance,
        the original and every other revision beside it (shared/keys.py `revision_key`)."""
        if not key:
            return []
        parsed = parse_instance_object(key)
        if parsed is None:
            return [key]
        study, series, sop, _rev = parsed
        prefix = f"{key.rsplit('/', 1)[0]}/{sop}."
        found = {
            i.key
            for i in self.store.list(prefix)
            if (p := parse_instance_object(i.key)) is not None and p[:3] == (study, series, sop)
        }
        return sorted(found | {key})

    def _record(self, rep: PurgeReport) -> None:
        audit = self._audit()
        try:
            for study, n in sorted(rep.studies.items()):
                audit.record(
                    action="purge",
                    actor=ACTOR,
                    target=f"study {study}",
                    study_uid=study,
                    detail=f"instances={n} grace_days={self.cfg.retention.delete_grace_days:g}",
                )
        finally:
            audit.close()


def auto_purge(
    cfg: Config,
    db: Database,
    cache_dir: Path,
    *,
    clock: Callable[[], float] = time.time,
    audit: Callable[[], SiteAudit] | None = None,
) -> list[str]:
    """`retention.auto_purge`: delete every study whose retention ran out and that no hold
    covers, through the one deletion path (its grace applies, then the purge); with
    `auto_purge_dry_run` only log and audit what would go. Returns the study UIDs."""
    r = cfg.retention
    today = dt.datetime.fromtimestamp(clock(), dt.UTC).date()
    due = expired(db.reader(), r, today)
    trail = (audit or (lambda: SiteAudit(cfg)))()
    done: list[str] = []
    try:
        for line in due:
            why = f"retention expired on {line.until()} (rule {line.retention.rule!r})"
            if r.auto_purge_dry_run:
                log.info("auto purge dry run: would delete study_uid=%s %s", line.study_uid, why)
                trail.record(
                    action="auto-purge",
                    actor=AUTO_ACTOR,
                    study_uid=line.study_uid,
                    target=f"study {line.study_uid}",
                    outcome="dry-run",
                    reason=why,
                )
                done.append(line.study_uid)
                continue
            target = Target(line.study_uid)
            try:
                delete(db, cache_dir, r, target, Actor(AUTO_ACTOR), reason=why, clock=clock)
            except PacsError as exc:  # busy, or a hold placed meanwhile: the next run
                log.warning("auto purge skipped study_uid=%s error=%s", line.study_uid, exc)
                continue
            trail.record(
                action="delete",
                actor=AUTO_ACTOR,
                study_uid=line.study_uid,
                target=f"study {line.study_uid}",
                reason=why,
            )
            done.append(line.study_uid)
    finally:
        trail.close()
    if done:
        log.info("auto purge studies=%d dry_run=%s", len(done), r.auto_purge_dry_run)
    return done
