"""The edge's one way to the bytes of an instance, wherever they are right now (seam 1).

Every reader of a cached instance that leaves the process (C-MOVE, C-GET, routing, WADO,
Storage Commitment) asks a `Locator`:

- `read(ref)` -> the whole file, verified against the crc32c recorded at ingest in the same
  pass (`shared/integrity.py`); `open(ref)` -> a `VerifyingReader` for streaming callers, which
  raises `CorruptInstance` before it hands over the last bytes of a damaged file.
- A local row is served from the cache. An `evicting` row (the sync agent is deleting it, or
  crashed doing so) still has its file: the eviction is cancelled (`evicting -> synced`; the
  evictor unlinks only by winning `evicting -> evicted` in the same transaction) and the file
  served, never waited for. An evicted row is recalled through the plugged-in `Recaller`
  (edge/recall.py). A `lost` row fails at once with what to do.
- A damaged file is quarantined and its verified cloud copy fetched back through the recall
  path (`shared/quarantine.py`), or, without one, the instance is marked `lost` and this one
  read fails with its UID: the caller counts one failed sub-operation and lists the UID.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Protocol

from edge.cache import Cache
from shared.errors import CorruptInstance, NotFound, PacsError
from shared.index import Database
from shared.integrity import VerifyingReader, read_verified
from shared.lifecycle import (
    CLOUD_VERIFIED_STATES,
    LOCAL_STATES,
    State,
    transition,
)
from shared.quarantine import handle_damage
from shared.recall import GONE_STATES, gone
from shared.rows import from_row

INSTANCE_COLUMNS = (
    "i.id, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax, i.path, i.state, "
    "i.study_id, i.size, i.crc32c"
)
# Each pass follows one change of the row made by another actor (evicted under us, replaced,
# repaired); more than this many in one read means something keeps changing it.
PASSES = 4


@dataclass(frozen=True)
class InstanceRef:
    """The index columns retrieve needs about one instance."""

    id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str
    state: str
    study_id: int
    size: int
    crc32c: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> InstanceRef:
        return from_row(cls, row)


class Recaller(Protocol):
    """Brings an evicted instance back into the cache (read-through from the object store).

    Implemented by the shared recall engine (edge/recall.py) and handed to
    `EdgeServer.recaller`. `recall` verifies the downloaded bytes, moves the row through
    `recalling` to a local state and returns the cache path; `fetch_claimed` does the same for
    a row the damage policy already moved to `recalling`. Failures raise a PacsError that the
    caller reports as one failed sub-operation.
    """

    def recall(self, ref: InstanceRef) -> Path: ...

    def fetch_claimed(self, instance_id: int) -> Path: ...


class Locator:
    """Verified reads of instances for one edge process: its index, cache and recaller."""

    def __init__(self, db: Database, cache: Cache, recaller: Recaller | None) -> None:
        self.db = db
        self.cache = cache
        self.recaller = recaller

    def read(self, ref: InstanceRef, *, reader: str = "retrieve") -> bytes:
        """The instance's bytes, verified; a damaged file is replaced from its cloud copy.

        Raises a PacsError naming the UID when no intact bytes can be had (lost, recall failed).
        `reader` names the caller in the quarantine record (retrieve, routing, wado...).
        """
        return self.read_at(ref, reader=reader)[1]

    def read_at(self, ref: InstanceRef, *, reader: str = "retrieve") -> tuple[Path, bytes]:
        """`read`, plus the cache path the verified bytes came from."""
        for _ in range(PASSES):
            path, ref = self._where(ref)
            try:
                return path, read_verified(path, ref.crc32c, ref.size, ref.sop_instance_uid)
            except FileNotFoundError:
                ref = self._fresh(ref, path)
            except CorruptInstance as exc:
                repaired = self._damaged(ref, exc, reader)
                if repaired is not None:
                    uid = ref.sop_instance_uid
                    return repaired, read_verified(repaired, ref.crc32c, ref.size, uid)
                ref = self._fresh(ref, path)
        raise NotFound(f"{ref.sop_instance_uid}: the instance kept changing state while read")

    def open(self, ref: InstanceRef, *, reader: str = "retrieve") -> VerifyingReader:
        """A verifying stream over the instance's bytes for callers that send as they read.

        Damage is found when the last bytes are read: the reader then quarantines the file
        (and repairs it from the cloud copy or marks the instance lost) before it raises
        `CorruptInstance`, so the caller fails this one transfer; a new read gets the repair.
        """
        for _ in range(PASSES):
            path, ref = self._where(ref)
            try:
                fh = open(path, "rb")  # noqa: SIM115 - owned by the returned reader
            except FileNotFoundError:
                ref = self._fresh(ref, path)
                continue
            on_damage = functools.partial(self._quietly_damaged, ref, reader=reader)
            return _PolicyReader(fh, ref, on_damage)
        raise NotFound(f"{ref.sop_instance_uid}: the instance kept changing state while opened")

    def verify(self, ref: InstanceRef, *, reader: str = "commitment") -> None:
        """Check that intact bytes of the instance are held, handing them nowhere (Storage
        Commitment). Evicted rows are vouched for by their cloud copy, verified before the
        eviction (invariant 2); a damaged local file goes through the same policy and counts
        as held once its verified cloud copy is back. Raises CorruptInstance or NotFound."""
        if State(ref.state) in CLOUD_VERIFIED_STATES - {State.SYNCED}:
            return  # evicting, evicted, recalling: no need to read (or cancel) anything
        try:
            with self.open(ref, reader=reader) as stream:
                while stream.read(1024 * 1024):
                    pass
        except CorruptInstance:
            if State(self._fresh(ref).state) not in CLOUD_VERIFIED_STATES:
                raise

    def path(self, ref: InstanceRef) -> Path:
        """A readable cache path without verification (callers that verify themselves)."""
        return self._where(ref)[0]

    # ---- internals ------------------------------------------------------------------------
    def _where(self, ref: InstanceRef) -> tuple[Path, InstanceRef]:
        """A path holding the instance's bytes now, and the row as it was when found there."""
        for _ in range(PASSES):
            state = State(ref.state)
            if state is State.EVICTING:
                with self.db.write() as conn:  # still on disk: cancel instead of waiting
                    cancelled = transition(
                        conn, ref.id, State.EVICTING, State.SYNCED, last_access=time.time()
                    )
                ref = replace(ref, state=State.SYNCED.value) if cancelled else self._fresh(ref)
                continue
            if state in LOCAL_STATES:
                return self.cache.path(ref.path), ref
            if state in GONE_STATES:
                raise gone(ref.sop_instance_uid, state)
            if self.recaller is None:
                raise NotFound(
                    f"{ref.sop_instance_uid}: state {state} and read-through recall is not "
                    "configured",
                    hint="configure the object store (sync.store_url), or prefetch the study",
                )
            return self.recaller.recall(ref), self._fresh(ref)
        raise NotFound(f"{ref.sop_instance_uid}: the instance kept changing state while located")

    def _fresh(self, ref: InstanceRef, missing: Path | None = None) -> InstanceRef:
        """The row again; NotFound when it is gone, or still says local without its file."""
        row = (
            self.db.reader()
            .execute(
                "SELECT id, sop_instance_uid, sop_class_uid, transfer_syntax, path, state, "
                "study_id, size, crc32c FROM instances WHERE id = ?",
                (ref.id,),
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(f"{ref.sop_instance_uid}: no longer in the index")
        new = InstanceRef.from_row(row)
        if missing is not None and new == ref and State(new.state) in LOCAL_STATES:
            raise NotFound(
                f"{ref.sop_instance_uid}: state {new.state} but the cache file is missing",
                hint="the file was removed outside hpacs; see the start-up reconcile report",
            )
        return new

    def _damaged(self, ref: InstanceRef, exc: CorruptInstance, reader: str) -> Path | None:
        return handle_damage(
            self.db,
            self.cache.root,
            ref.id,
            (ref.size, ref.crc32c),
            str(exc),
            reader,
            self.recaller,
        )

    def _quietly_damaged(self, ref: InstanceRef, exc: CorruptInstance, *, reader: str) -> None:
        """The policy for a stream that found damage; the damage is what the stream reports,
        whatever became of the repair (its own failure is logged by the recall path)."""
        try:
            self._damaged(ref, exc, reader)
        except PacsError:
            pass


class _PolicyReader(VerifyingReader):
    """A VerifyingReader that applies the damage policy before raising CorruptInstance."""

    def __init__(
        self, fh: BinaryIO, ref: InstanceRef, on_damage: Callable[[CorruptInstance], None]
    ) -> None:
        super().__init__(fh, ref.crc32c, ref.size, ref.sop_instance_uid)
        self._on_damage = on_damage

    def read(self, n: int = -1) -> bytes:
        try:
            return super().read(n)
        except CorruptInstance as exc:
            self.close()
            self._on_damage(exc)
            raise


def read_local(db: Database, cache: Cache, ref: InstanceRef, recaller: Recaller | None) -> bytes:
    """`Locator(db, cache, recaller).read(ref)`: the verified bytes of one instance."""
    return Locator(db, cache, recaller).read(ref)


def open_local(
    db: Database, cache: Cache, ref: InstanceRef, recaller: Recaller | None
) -> VerifyingReader:
    """`Locator(db, cache, recaller).open(ref)`: a verifying stream over one instance."""
    return Locator(db, cache, recaller).open(ref)


def ensure_local(cache: Cache, ref: InstanceRef, recaller: Recaller | None) -> Path:
    """A readable cache path for `ref` (no verification, no eviction cancel: kept for callers
    not yet moved to `Locator`; reading the path is their own, unverified, business)."""
    state = State(ref.state)
    if state in LOCAL_STATES:
        path = cache.path(ref.path)
        if not path.is_file():
            raise NotFound(
                f"{ref.sop_instance_uid}: state {state} but the cache file is missing",
                hint="the file was removed outside hpacs; see the start-up reconcile report",
            )
        return path
    if recaller is None:
        raise NotFound(
            f"{ref.sop_instance_uid}: state {state} and read-through recall is not configured",
            hint="start the sync agent's recall support, or prefetch the study",
        )
    return recaller.recall(ref)
