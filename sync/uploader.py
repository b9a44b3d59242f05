"""The upload loop's core: claim `cached` rows, upload create-only, verify, record the outcome.

Claiming is a compare-and-set transition (`cached -> uploading`), so two agents can never upload
one row; the network work happens outside any transaction; outcomes are committed per batch.
An object that already exists with our crc32c counts as uploaded (a retried request may have
landed, or a crash hit between upload and commit); one with different bytes is a `conflict`:
ours go under `shared.keys.conflict_key`, nothing is ever overwritten. A corrected instance's
new bytes go to the revision key its row names (edge/corrections.py), beside the original.

Retry policy (invariant 6: all of it in the row):
- transient store errors (connection, timeout, 408, 429, 5xx): back to `cached` with a jittered,
  capped `next_attempt_at`; an outage is waited out however long it lasts;
- checksum mismatches and unexpected errors: the same, but after `sync.max_attempts` -> `failed`;
- permanent errors (403, missing bucket, missing cache file): `failed` at once, with the reason;
- a cache file whose bytes fail the crc32c recorded at ingest (damaged at rest before it was
  uploaded): `lost` at once, the file quarantined (shared/quarantine.py), one ERROR line saying
  what to do. Files up to `VERIFY_IN_MEMORY_MAX` are read through the shared verifying reader
  and the verified bytes uploaded (damaged bytes never leave); larger ones are uploaded from
  the path and, when the store reports another crc32c, checked locally the same way.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from shared.config import SyncConfig
from shared.errors import (
    ChecksumMismatch,
    CorruptInstance,
    NotFound,
    ObjectExists,
    PermanentStoreError,
    TransientStoreError,
)
from shared.index import Database
from shared.integrity import CHUNK, open_verified, read_verified
from shared.keys import conflict_key, upload_key
from shared.lifecycle import State, transition
from shared.quarantine import Damaged, quarantine, report_lost
from shared.store import ObjectStore
from sync import rows
from sync.backoff import retry_delay

log = logging.getLogger("hpacs.sync.upload")

CONTENT_TYPE = "application/dicom"
BATCH_FACTOR = 64  # a batch claims up to concurrency * this rows (the loop's work unit)
# Files up to this size are verified and uploaded from memory in one read (concurrency x this
# at most in flight); larger ones stream from the path and are verified only on a mismatch.
VERIFY_IN_MEMORY_MAX = 32 * 1024 * 1024


class Result(StrEnum):
    SYNCED = "synced"
    DAMAGED = "damaged"  # the local file fails its own crc32c: no retry can help
    CONFLICT = "conflict"
    RETRY = "retry"  # transient: never gives up
    RETRY_COUNTED = "retry_counted"  # gives up after max_attempts
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    result: Result
    object_key: str = ""
    error: str = ""


@dataclass
class BatchStats:
    claimed: int = 0
    synced: int = 0
    conflicts: int = 0
    retries: int = 0
    failed: int = 0
    transient: int = 0
    bytes: int = 0


class Uploader:
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
        self.last_success_at = 0.0

    # ---- one batch ----------------------------------------------------------------------
    def run_batch(self, limit: int | None = None) -> BatchStats:
        """Claim up to `limit` due rows and upload them, keeping the pool busy to the end.

        Rows are claimed in windows of four times the concurrency, and each time a group of
        outcomes is committed (twice the concurrency, or every 0.2 s) the same transaction
        claims as many new rows as finished: one index commit (one WAL fsync) per group for
        both, and no batch barrier where the pool idles behind the slowest upload of a batch
        (measured: that tail and a claim transaction per batch cost a drain to file:// ~10%).
        A crash loses little: rows left `uploading` go back to `cached`, and their objects,
        if they landed, are recognised by checksum. After a transient error no more rows are
        claimed in this batch, so an outage is not hammered with a growing window.
        """
        conc = self.cfg.upload_concurrency
        limit = limit or conc * BATCH_FACTOR
        window, group = 4 * conc, 2 * conc
        claimed = self.claim(min(limit, window))
        stats = BatchStats(claimed=len(claimed))
        if not claimed:
            return stats
        pending = {self.pool.submit(self.upload_one, inst): inst for inst in claimed}
        more = len(claimed) == min(limit, window) < limit
        done: list[tuple[rows.Instance, Outcome]] = []
        last_commit = time.monotonic()
        while pending:
            finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in finished:
                done.append((pending.pop(fut), fut.result()))
            if not done:
                continue
            if len(done) >= group or not pending or time.monotonic() - last_commit > 0.2:
                if any(o.result is Result.RETRY for _, o in done):
                    more = False
                want = min(limit - stats.claimed, window - len(pending)) if more else 0
                new = self.record([d[0] for d in done], [d[1] for d in done], stats, claim=want)
                stats.claimed += len(new)
                more = more and len(new) == want and stats.claimed < limit
                for inst in new:
                    pending[self.pool.submit(self.upload_one, inst)] = inst
                done, last_commit = [], time.monotonic()
        return stats

    def claim(self, limit: int) -> list[rows.Instance]:
        with self.db.write() as conn:
            return self._claim(conn, limit)

    def _claim(self, conn: sqlite3.Connection, limit: int) -> list[rows.Instance]:
        if limit <= 0:
            return []
        found = conn.execute(
            rows.SELECT + " WHERE i.state = ? AND i.next_attempt_at <= ? "
            "ORDER BY i.next_attempt_at, i.id LIMIT ?",
            (State.CACHED.value, time.time(), limit),
        ).fetchall()
        claimed = []
        for r in found:
            inst = rows.instance(r)
            if transition(conn, inst.id, State.CACHED, State.UPLOADING, attempts=inst.attempts + 1):
                claimed.append(inst)
        return claimed

    def upload_one(self, inst: rows.Instance) -> Outcome:
        """All the network work for one instance; never raises."""
        try:
            return self._upload(inst)
        except CorruptInstance as exc:
            return Outcome(Result.DAMAGED, error=str(exc))
        except TransientStoreError as exc:
            return Outcome(Result.RETRY, error=f"transient: {exc}")
        except ChecksumMismatch as exc:
            return Outcome(Result.RETRY_COUNTED, error=f"checksum mismatch: {exc}")
        except (PermanentStoreError, NotFound) as exc:
            return Outcome(Result.FAILED, error=f"permanent: {exc}")
        except FileNotFoundError:
            return Outcome(Result.FAILED, error="the cache file is missing")
        except Exception as exc:  # a bug or an unclassified error: counted, so it cannot loop
            log.exception("unexpected upload error sop_instance_uid=%s", inst.sop_instance_uid)
            return Outcome(Result.RETRY_COUNTED, error=f"{type(exc).__name__}: {exc}")

    def _upload(self, inst: rows.Instance) -> Outcome:
        # the first bytes of an instance at its instance key; a correction's new bytes at the
        # revision key it planned in the row (shared.keys.revision_key), the original kept
        key = upload_key(inst.study_uid, inst.series_uid, inst.sop_instance_uid, inst.object_key)
        path = self.cache_dir / inst.path
        if not path.is_file():
            raise FileNotFoundError(path)
        meta = {"crc32c": inst.crc32c}
        source: Path | bytes = path
        if inst.size <= VERIFY_IN_MEMORY_MAX:
            source = read_verified(path, inst.crc32c, inst.size, inst.sop_instance_uid)
        try:
            info = self.store.put(key, source, content_type=CONTENT_TYPE, metadata=meta)
        except ObjectExists:
            return self._existing(inst, key, path)
        if info.crc32c != inst.crc32c:
            # Our own create landed with other bytes: remove it so the retry can create it.
            self._delete_quietly(key)
            if isinstance(source, Path):
                _verify_local(path, inst)  # damaged here, or on the way?
            raise ChecksumMismatch(f"stored crc32c {info.crc32c} != local {inst.crc32c}")
        return Outcome(Result.SYNCED, key)

    def _existing(self, inst: rows.Instance, key: str, path: Path) -> Outcome:
        head = self.store.head(key)
        if head is None:
            raise TransientStoreError(f"{key} existed and then vanished")
        if head.crc32c == inst.crc32c:
            return Outcome(Result.SYNCED, key)  # an earlier attempt landed
        if head.metadata.get("crc32c") == inst.crc32c:
            # our own earlier upload, corrupted on the way and not yet cleaned up (a crash)
            self._delete_quietly(key)
            raise ChecksumMismatch(f"earlier upload of {key} was corrupted; removed")
        ckey = conflict_key(inst.study_uid, inst.series_uid, inst.sop_instance_uid, inst.crc32c)
        try:
            info = self.store.put(
                ckey, path, content_type=CONTENT_TYPE, metadata={"crc32c": inst.crc32c}
            )
        except ObjectExists:
            existing = self.store.head(ckey)
            if existing is None:
                raise TransientStoreError(f"{ckey} existed and then vanished") from None
            info = existing
        if info.crc32c != inst.crc32c:
            self._delete_quietly(ckey)
            raise ChecksumMismatch(f"conflict copy crc32c {info.crc32c} != local {inst.crc32c}")
        return Outcome(
            Result.CONFLICT,
            ckey,
            f"different bytes already at {key} (crc32c {head.crc32c}); ours kept at {ckey}",
        )

    def _delete_quietly(self, key: str) -> None:
        try:
            self.store.delete(key)
        except NotFound:
            pass
        except Exception as exc:
            log.warning("could not remove a corrupted upload key=%s error=%s", key, exc)

    # ---- outcomes -----------------------------------------------------------------------
    def record(
        self,
        claimed: list[rows.Instance],
        outcomes: list[Outcome],
        stats: BatchStats,
        claim: int = 0,
    ) -> list[rows.Instance]:
        """Commit outcomes; in the same transaction claim up to `claim` more due rows."""
        now = time.time()
        failed_before = stats.failed
        cfg = self.cfg
        lost: list[tuple[Damaged, Path, str]] = []
        with self.db.write() as conn:
            for inst, out in zip(claimed, outcomes, strict=True):
                attempts = inst.attempts + 1
                result = out.result
                if result is Result.RETRY_COUNTED and attempts >= cfg.max_attempts:
                    result = Result.FAILED
                if result is Result.SYNCED:
                    transition(
                        conn,
                        inst.id,
                        State.UPLOADING,
                        State.SYNCED,
                        object_key=out.object_key,
                        synced_at=now,
                        last_error="",
                        next_attempt_at=0,
                    )
                    stats.synced += 1
                    stats.bytes += inst.size
                elif result is Result.CONFLICT:
                    transition(
                        conn,
                        inst.id,
                        State.UPLOADING,
                        State.CONFLICT,
                        object_key=out.object_key,
                        synced_at=now,
                        last_error=out.error[:500],
                    )
                    stats.conflicts += 1
                elif result is Result.DAMAGED:
                    row = Damaged(
                        inst.id,
                        inst.sop_instance_uid,
                        State.UPLOADING.value,
                        inst.path,
                        inst.size,
                        inst.crc32c,
                        "",
                    )
                    where = quarantine(conn, self.cache_dir, row, State.LOST, out.error, "upload")
                    if where is not None:
                        lost.append((row, where.relative_to(self.cache_dir), out.error))
                    stats.failed += 1
                elif result is Result.FAILED:
                    transition(
                        conn, inst.id, State.UPLOADING, State.FAILED, last_error=out.error[:500]
                    )
                    stats.failed += 1
                else:
                    delay = retry_delay(attempts, cfg.backoff_initial_s, cfg.backoff_max_s)
                    transition(
                        conn,
                        inst.id,
                        State.UPLOADING,
                        State.CACHED,
                        next_attempt_at=now + delay,
                        last_error=out.error[:500],
                    )
                    stats.retries += 1
                    stats.transient += result is Result.RETRY
            new = self._claim(conn, claim)
        if stats.synced:
            self.last_success_at = now
        for row, where, detail in lost:
            report_lost(row, where, detail, "upload")
        self._log(claimed, outcomes, stats, failed_before)
        return new

    def _log(
        self,
        claimed: list[rows.Instance],
        outcomes: list[Outcome],
        stats: BatchStats,
        failed_before: int,
    ) -> None:
        for inst, out in zip(claimed, outcomes, strict=True):
            if out.result is Result.CONFLICT:
                log.warning(
                    "upload conflict sop_instance_uid=%s state=conflict detail=%s",
                    inst.sop_instance_uid,
                    out.error,
                )
        if stats.failed > failed_before:
            for inst, out in zip(claimed, outcomes, strict=True):
                if out.result in (Result.FAILED, Result.RETRY_COUNTED):  # DAMAGED: logged
                    log.error(
                        "upload problem sop_instance_uid=%s attempt=%d error=%s",
                        inst.sop_instance_uid,
                        inst.attempts + 1,
                        out.error,
                    )
        retried = [o for o in outcomes if o.result in (Result.RETRY, Result.RETRY_COUNTED)]
        if retried:  # this group's, not the batch's running totals
            log.warning(
                "upload retries scheduled count=%d transient=%d first_error=%s",
                len(retried),
                sum(o.result is Result.RETRY for o in retried),
                retried[0].error[:200],
            )


def _verify_local(path: Path, inst: rows.Instance) -> None:
    """CorruptInstance when the cache file no longer matches the crc32c recorded at ingest."""
    with open_verified(path, inst.crc32c, inst.size, inst.sop_instance_uid) as reader:
        while reader.read(CHUNK):
            pass
