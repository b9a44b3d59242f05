"""The one ingest path: C-STORE, STOW-RS, the hot folder and `import` all end here.

Write order (invariant 1): temp file in the cache filesystem -> fsync -> create-only link to
the opaque fan-out path -> fsync the directory -> index transaction -> only then success. When
the index write fails the file is removed and the caller answers a failure.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from edge.cache import Cache
from edge.commit import GroupCommit
from shared import metrics
from shared.checksum import crc32c_file
from shared.dicom import Header, read_header
from shared.errors import (
    DuplicateConflict,
    IndexUnavailable,
    InstanceBusy,
    OutOfResources,
    UIDMismatch,
)
from shared.fsutil import durable_link, durable_rename, fsync_file
from shared.index import Database
from shared.lifecycle import LOCAL_STATES, TRANSITIONS, State, transition
from shared.rows import Origin, index_instance

log = logging.getLogger("hpacs.edge.ingest")


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    header: Header
    size: int
    crc32c: str
    relpath: str


class Ingestor:
    def __init__(
        self,
        db: Database,
        cache: Cache,
        *,
        duplicates: str = "keep",
        min_free_bytes: int = 0,
        max_object_bytes: int = 0,
    ) -> None:
        self.db = db
        self.cache = cache
        self.duplicates = duplicates
        self.min_free_bytes = min_free_bytes
        self.max_object_bytes = max_object_bytes  # 0: no limit
        # Called inside the index transaction of a newly stored instance (routing enqueues
        # its forward jobs there: atomic with the row, and ingest never waits for a send).
        self.on_indexed: list[Callable[[sqlite3.Connection, Header, Origin], None]] = []
        self.commits = GroupCommit(db)

    # ---- entry doors -------------------------------------------------------------------
    def ingest_temp(
        self,
        temp: Path,
        origin: Origin,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
    ) -> IngestResult:
        """Ingest a complete Part-10 temp file in the cache's filesystem; takes ownership of it."""
        try:
            result = self._ingest(temp, origin, expected_sop_class, expected_sop_instance)
            metrics.store_outcome(result.outcome.value, result.size, origin.source)
            return result
        finally:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass

    def ingest_stream(self, stream: BinaryIO, origin: Origin) -> IngestResult:
        """Ingest a Part-10 byte stream (STOW-RS part, upload), spooled to a temp file."""
        fh, temp = self.cache.new_temp()
        try:
            with fh:
                while chunk := stream.read(1024 * 1024):
                    fh.write(chunk)
        except OSError as exc:
            os.unlink(temp)
            raise OutOfResources(f"cannot spool the object to the cache: {exc}") from exc
        return self.ingest_temp(temp, origin)

    def ingest_path(self, path: str | Path, origin: Origin) -> IngestResult:
        """Ingest a file from anywhere (hot folder, import); the source file is left alone."""
        try:
            temp = self.cache.copy_to_temp(path)
        except OSError as exc:
            raise OutOfResources(f"cannot copy {path} into the cache: {exc}") from exc
        return self.ingest_temp(temp, origin)

    # ---- the pipeline ------------------------------------------------------------------
    def _ingest(
        self,
        temp: Path,
        origin: Origin,
        expected_sop_class: str | None,
        expected_sop_instance: str | None,
    ) -> IngestResult:
        if self.max_object_bytes and temp.stat().st_size > self.max_object_bytes:
            raise OutOfResources(
                f"object of {temp.stat().st_size} bytes exceeds edge.max_object_bytes="
                f"{self.max_object_bytes}"
            )
        header = read_header(temp)
        if expected_sop_class is not None and expected_sop_class != header.sop_class_uid:
            raise UIDMismatch(
                f"command SOP Class {expected_sop_class} != dataset {header.sop_class_uid}"
            )
        if expected_sop_instance is not None and expected_sop_instance != header.sop_instance_uid:
            raise UIDMismatch(
                f"command SOP Instance {expected_sop_instance} != dataset {header.sop_instance_uid}"
            )
        if self.min_free_bytes and self.cache.free_bytes() < self.min_free_bytes:
            raise OutOfResources(
                f"cache filesystem has less than edge.min_free_bytes={self.min_free_bytes} free"
            )
        try:
            size = temp.stat().st_size
            crc = crc32c_file(temp)
            fsync_file(temp)
            relpath, final = self.cache.path_for(header.sop_instance_uid)
            linked = durable_link(temp, final)
        except OSError as exc:
            raise OutOfResources(f"cannot write to the cache: {exc}") from exc
        if not linked:
            return self._existing(temp, header, origin, size, crc, relpath, final)
        try:

            def index(conn: sqlite3.Connection) -> None:
                index_instance(conn, header, relpath, size, crc, origin, time.time())
                for hook in self.on_indexed:
                    hook(conn, header, origin)

            # Concurrent stores share one transaction and its fsync (edge/commit.py).
            self.commits.run(index)
        except sqlite3.IntegrityError as exc:
            # A row appeared although no file was at the path: a concurrent store of the same
            # bytes adopted our file (keep it), or the instance was evicted and is sent again
            # (the verified cloud copy stands: drop our link), or its file was lost.
            row = self._row(header.sop_instance_uid)
            same = row is not None and (row["size"], row["crc32c"]) == (size, crc)
            if not (same and row is not None and State(row["state"]) in LOCAL_STATES):
                _unlink_quietly(final)
            if row is None:
                raise IndexUnavailable(f"index write failed: {exc}") from exc
            return self._existing(temp, header, origin, size, crc, relpath, final)
        except (sqlite3.Error, OSError) as exc:
            _unlink_quietly(final)
            raise IndexUnavailable(f"index write failed: {exc}") from exc
        except BaseException:
            _unlink_quietly(final)
            raise
        return IngestResult(Outcome.STORED, header, size, crc, relpath)

    def _row(self, sop_instance_uid: str) -> sqlite3.Row | None:
        return (
            self.db.reader()
            .execute(
                "SELECT size, crc32c, state FROM instances WHERE sop_instance_uid = ?",
                (sop_instance_uid,),
            )
            .fetchone()
        )

    def _existing(
        self,
        temp: Path,
        header: Header,
        origin: Origin,
        size: int,
        crc: str,
        relpath: str,
        final: Path,
    ) -> IngestResult:
        """A file already sits at the instance's path: duplicate, conflict or replacement."""
        row = (
            self.db.reader()
            .execute(
                "SELECT id, size, crc32c, state FROM instances WHERE sop_instance_uid = ?",
                (header.sop_instance_uid,),
            )
            .fetchone()
        )
        if row is None:
            # A file without a row (crash between link and commit, or a concurrent store that
            # has not committed yet): compare with the bytes on disk.
            same = final.stat().st_size == size and crc32c_file(final) == crc
            if same:
                return self._adopt_or_wait(header, relpath, size, crc, origin)
            raise DuplicateConflict(
                f"{header.sop_instance_uid}: different bytes are being stored concurrently"
            )
        if row["size"] == size and row["crc32c"] == crc:
            return IngestResult(Outcome.DUPLICATE, header, size, crc, relpath)
        if self.duplicates != "replace":
            log.warning(
                "duplicate with different bytes kept the stored version "
                "sop_instance_uid=%s calling_ae=%s policy=keep",
                header.sop_instance_uid,
                origin.calling_ae,
            )
            raise DuplicateConflict(
                f"{header.sop_instance_uid} already stored with different bytes (policy keep)"
            )
        if State.CACHED not in TRANSITIONS[State(row["state"])]:
            # evicting or recalling: replacing the file under that work would corrupt it
            raise InstanceBusy(
                f"{header.sop_instance_uid} is {row['state']}; replace it once that finishes"
            )
        return self._replace(temp, header, origin, size, crc, relpath, final)

    def _adopt_or_wait(
        self, header: Header, relpath: str, size: int, crc: str, origin: Origin
    ) -> IngestResult:
        try:
            with self.db.write() as conn:
                exists = conn.execute(
                    "SELECT 1 FROM instances WHERE sop_instance_uid = ?",
                    (header.sop_instance_uid,),
                ).fetchone()
                if not exists:
                    index_instance(conn, header, relpath, size, crc, origin, time.time())
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"index write failed: {exc}") from exc
        return IngestResult(Outcome.DUPLICATE, header, size, crc, relpath)

    def _replace(
        self,
        temp: Path,
        header: Header,
        origin: Origin,
        size: int,
        crc: str,
        relpath: str,
        final: Path,
    ) -> IngestResult:
        try:
            durable_rename(temp, final)
        except OSError as exc:
            raise OutOfResources(f"cannot write to the cache: {exc}") from exc
        try:
            with self.db.write() as conn:
                row = conn.execute(
                    "SELECT id, state FROM instances WHERE sop_instance_uid = ?",
                    (header.sop_instance_uid,),
                ).fetchone()
                ok = transition(
                    conn,
                    row["id"],
                    State(row["state"]),
                    State.CACHED,
                    size=size,
                    crc32c=crc,
                    path=relpath,
                    transfer_syntax=header.transfer_syntax,
                    attempts=0,
                    next_attempt_at=0,
                    last_error="",
                )
                if not ok:
                    raise IndexUnavailable("instance changed state during replace; retry")
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"index write failed: {exc}") from exc
        log.warning(
            "duplicate with different bytes replaced the stored version "
            "sop_instance_uid=%s calling_ae=%s policy=replace",
            header.sop_instance_uid,
            origin.calling_ae,
        )
        return IngestResult(Outcome.REPLACED, header, size, crc, relpath)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


__all__ = ["IngestResult", "Ingestor", "Origin", "Outcome"]
