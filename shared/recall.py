"""Recall: an evicted instance comes back from the object store into the cache.

Used by the edge's retrieve (edge/recall.py, read-through), by the sync agent's restore
prefetch and scrub, and by the damage policy (shared/quarantine.py): one recall path for all.

`evicted -> recalling` (a compare-and-set: one recaller per instance, across processes) ->
download -> crc32c and size checked against the index -> temp file in the cache filesystem,
fsync, rename into place -> `recalling -> synced`. A failure puts the row back to `evicted`
and raises a PacsError, so the caller fails one sub-operation and nothing half-written is ever
visible at the instance's path; a store that answers "no such object" marks the row `lost`
(one ERROR line saying what to do). A row `recalling` by another process is waited for until
it settles; a row `evicting` is never waited for: its file is still there, so the eviction is
cancelled (`evicting -> synced`, which the evictor re-checks before it unlinks) and the file
served.

The first recall of a study starts parallel downloads of the rest of it
(`sync.recall_concurrency`), in retrieve order, so a C-MOVE of an evicted study streams
instead of paying one round trip per instance.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from shared.checksum import Crc32c
from shared.errors import ChecksumMismatch, NotFound, OutOfResources, PacsError, TransientStoreError
from shared.fsutil import durable_rename
from shared.index import Database
from shared.keys import is_cache_relpath
from shared.lifecycle import HIDDEN_STATES, LOCAL_STATES, State, transition
from shared.quarantine import LOST_ADVICE
from shared.store import ObjectStore

log = logging.getLogger("hpacs.recall")

CHUNK = 1024 * 1024
MISSING_FILE_WAIT_S = 2.0  # a local row without its file: another actor is moving it right now
GONE_STATES = HIDDEN_STATES | {State.LOST}  # no bytes to serve or recall


def gone(sop_instance_uid: str, state: State) -> NotFound:
    """What a reader is told of an instance in GONE_STATES: deleted, or lost (and what to do)."""
    if state is State.LOST:
        return NotFound(
            f"{sop_instance_uid}: the instance is lost (no intact copy in the cache or the "
            "object store)",
            hint=LOST_ADVICE,
        )
    return NotFound(f"{sop_instance_uid}: the instance was deleted")


class Ref(Protocol):
    """What recall needs of a retrieve's instance reference (edge.locate.InstanceRef)."""

    @property
    def id(self) -> int: ...

    @property
    def study_id(self) -> int: ...


class Recaller:
    def __init__(
        self,
        db: Database,
        cache_root: Path,
        store: ObjectStore | Callable[[], ObjectStore],
        *,
        concurrency: int = 8,
        settle_timeout_s: float = 60.0,
    ) -> None:
        self.db = db
        self.cache_root = Path(cache_root).resolve()
        self.tmp_dir = self.cache_root / "tmp"  # the edge's Cache.tmp: same filesystem
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # A factory defers opening the store (credentials, clients) to the first recall.
        self._store = store if not callable(store) else None
        self._store_factory = store if callable(store) else None
        self.settle_timeout_s = settle_timeout_s
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="recall")
        self._lock = threading.RLock()  # a done callback may run inside _submit
        self._inflight: dict[int, Future[Path]] = {}
        self._studies: dict[int, float] = {}  # study id -> when its prefetch started

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            assert self._store_factory is not None
            with self._lock:
                if self._store is None:
                    self._store = self._store_factory()
        return self._store

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # ---- the locate hook ------------------------------------------------------------------
    def recall(self, ref: Ref) -> Path:
        """A verified cache path for the instance, downloading it if it is not local."""
        path = self._local(ref.id)
        if path is not None:
            return path
        self.prefetch_study(ref.study_id)
        return self._submit(ref.id).result()

    def prefetch_study(self, study_id: int) -> int:
        """Start recalls of every evicted instance of a study; returns how many were queued."""
        now = time.monotonic()
        with self._lock:
            if now - self._studies.get(study_id, -1e9) < 5.0:
                return 0
            self._studies[study_id] = now
        ids = [
            r[0]
            for r in self.db.reader().execute(
                "SELECT i.id FROM instances i JOIN series se ON se.id = i.series_id "
                "WHERE i.study_id = ? AND i.state = ? "
                "ORDER BY se.series_number, se.id, i.instance_number, i.id",
                (study_id, State.EVICTED.value),
            )
        ]
        for iid in ids:
            self._submit(iid)
        return len(ids)

    def recall_many(self, ids: list[int]) -> list[Path]:
        """Recall instances in parallel (prefetch, restore); raises the first failure."""
        futures = [self._submit(i) for i in ids]
        return [f.result() for f in futures]

    # ---- internals ------------------------------------------------------------------------
    def _submit(self, iid: int) -> Future[Path]:
        with self._lock:
            fut = self._inflight.get(iid)
            if fut is None:
                fut = self.pool.submit(self._recall_one, iid)
                self._inflight[iid] = fut
                fut.add_done_callback(functools.partial(self._done, iid))
            return fut

    def _done(self, iid: int, _fut: Future[Path]) -> None:
        with self._lock:
            self._inflight.pop(iid, None)

    def _row(self, iid: int) -> tuple[str, str, str, int, str]:
        row = (
            self.db.reader()
            .execute(
                "SELECT state, path, object_key, size, crc32c FROM instances WHERE id = ?", (iid,)
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(f"instance row {iid} is gone")
        return row[0], row[1], row[2], int(row[3]), row[4]

    def _uid(self, iid: int) -> str:
        row = (
            self.db.reader()
            .execute("SELECT sop_instance_uid FROM instances WHERE id = ?", (iid,))
            .fetchone()
        )
        return str(row[0]) if row else f"row {iid}"

    def _local(self, iid: int) -> Path | None:
        state, relpath, *_ = self._row(iid)
        if State(state) in LOCAL_STATES:
            path = self._path(relpath)
            if path.is_file():
                return path
        return None

    def _path(self, relpath: str) -> Path:
        if not is_cache_relpath(relpath):
            raise NotFound(f"not a cache path: {relpath[:100]!r}")
        return self.cache_root / relpath

    def _recall_one(self, iid: int) -> Path:
        deadline = time.monotonic() + self.settle_timeout_s
        missing_since: float | None = None
        delay = 0.005
        while True:
            state, relpath, key, size, crc = self._row(iid)
            st = State(state)
            if st is State.EVICTING:
                # the file is still there: cancel the eviction instead of waiting for it
                with self.db.write() as conn:
                    transition(conn, iid, State.EVICTING, State.SYNCED, last_access=time.time())
                continue
            if st in LOCAL_STATES:
                path = self._path(relpath)
                if path.is_file():
                    return path
                # the row says local but the file is gone: being quarantined or removed
                now = time.monotonic()
                missing_since = now if missing_since is None else missing_since
                if now - missing_since > MISSING_FILE_WAIT_S:
                    raise NotFound(
                        f"{self._uid(iid)}: state {st} but the cache file is missing",
                        hint="the file was removed outside hpacs; see the edge's start-up "
                        "reconcile report",
                    )
            elif st is State.EVICTED:
                with self.db.write() as conn:
                    claimed = transition(conn, iid, State.EVICTED, State.RECALLING)
                if claimed:
                    return self._fetch(iid, relpath, key, size, crc)
            elif st in GONE_STATES:
                raise gone(self._uid(iid), st)
            if time.monotonic() > deadline:
                raise TransientStoreError(
                    f"instance {iid} stayed {st} for {self.settle_timeout_s}s"
                )
            time.sleep(delay)  # another actor is mid-transition: recalling
            delay = min(delay * 2, 0.2)

    def fetch_claimed(self, iid: int) -> Path:
        """Download a row the caller already moved to `recalling` (the damage policy in
        shared/quarantine.py, the admin's `retry-lost`)."""
        state, relpath, key, size, crc = self._row(iid)
        if State(state) is not State.RECALLING:
            raise NotFound(f"{self._uid(iid)} is {state}, not recalling")
        return self._fetch(iid, relpath, key, size, crc)

    def _fetch(self, iid: int, relpath: str, key: str, size: int, crc: str) -> Path:
        tmp: Path | None = None
        try:
            final = self._path(relpath)
            if not key:
                raise NotFound(f"instance {iid} has no object key: it never reached the store")
            fd, name = tempfile.mkstemp(dir=str(self.tmp_dir), suffix=".recall")
            tmp = Path(name)
            fh = os.fdopen(fd, "wb")
            h, n = Crc32c(), 0
            with fh, self.store.open(key) as src:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    n += len(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if n != size or h.hexdigest() != crc:
                raise ChecksumMismatch(
                    f"{key}: got {n} bytes crc32c {h.hexdigest()}, index says {size} {crc}"
                )
            durable_rename(tmp, final)
            tmp = None
        except BaseException as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            self._failed(iid, key, exc)
            if isinstance(exc, PacsError):
                raise
            if isinstance(exc, OSError):
                raise OutOfResources(f"cannot write the recalled file: {exc}") from exc
            raise
        with self.db.write() as conn:
            transition(
                conn, iid, State.RECALLING, State.SYNCED, last_access=time.time(), last_error=""
            )
        return final

    def _failed(self, iid: int, key: str, exc: BaseException) -> None:
        """`recalling -> evicted` (try again later), or `-> lost` when the store has no object."""
        lost = isinstance(exc, NotFound)
        text = " ".join(str(exc).split())[:300]  # store errors can span lines
        with self.db.write() as conn:
            transition(
                conn,
                iid,
                State.RECALLING,
                State.LOST if lost else State.EVICTED,
                last_error=f"recall: {text}",
            )
        if lost:
            log.error(
                "instance lost sop_instance_uid=%s object_key=%s error=%s: neither the cache "
                "nor the object store holds it; %s",
                self._uid(iid),
                key,
                text,
                LOST_ADVICE,
            )
        else:
            log.warning("recall failed object_key=%s error=%s", key, text)
