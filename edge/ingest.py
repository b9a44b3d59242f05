"""The one ingest path: C-STORE, STOW-RS, the hot folder and `import` all end here.

Every object first passes the acceptance rule (`shared.acceptance`); a bare dataset (no
preamble) is given its Part-10 form. Write order (invariant 1): temp file in the cache
filesystem -> fsync -> create-only link to the opaque fan-out path -> fsync the directory ->
index transaction -> only then success. When the index write fails the file is removed and the
caller answers a failure.

Replacing an instance (`edge.duplicates = "replace"`) keeps the same order: the new bytes get
a new cache path (a create-only link, directory fsynced), one transaction checks the row's
state and switches its path, size and crc32c, and only then is the old file unlinked. A crash
at any point leaves the old row with its old file or the new row with its new file; start-up
reconcile removes the file of whichever side lost (`edge.reconcile`).
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from edge.cache import Cache
from edge.commit import GroupCommit
from shared import acceptance, intake, metrics
from shared.checksum import crc32c_file
from shared.dicom import Header
from shared.errors import (
    DuplicateConflict,
    IndexUnavailable,
    InstanceBusy,
    InstanceDeleted,
    InvalidDataset,
    OutOfResources,
    UIDMismatch,
)
from shared.fsutil import durable_link, fsync_dir, fsync_file
from shared.index import Database
from shared.lifecycle import HIDDEN_STATES, LOCAL_STATES, TRANSITIONS, State, transition
from shared.rows import Origin, index_instance

log = logging.getLogger("hpacs.edge.ingest")


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"


@dataclass(frozen=True)
class Received:
    """A temp file its writer still holds open (the C-STORE spool), with what it learnt while
    writing it: ingest reads and fsyncs it through `fd` and takes its size and crc32c,
    instead of opening, stat-ing and reading the file again. The writer closes `fd`."""

    fd: int
    size: int
    crc32c: str


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
        *,
        expected_study: str | None = None,
        received: Received | None = None,
    ) -> IngestResult:
        """Ingest a complete Part-10 temp file in the cache's filesystem; takes ownership of it.
        The expected UIDs are what the request said (a C-STORE command, a STOW-RS URL)."""
        try:
            result = self._ingest(
                temp, origin, expected_sop_class, expected_sop_instance, expected_study, received
            )
            metrics.store_outcome(result.outcome.value, result.size, origin.source)
            return result
        finally:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass

    def ingest_stream(
        self, stream: BinaryIO, origin: Origin, *, expected_study: str | None = None
    ) -> IngestResult:
        """Ingest a Part-10 byte stream (STOW-RS part, upload), spooled to a temp file."""
        fh, temp = self.cache.new_temp()
        try:
            with fh:
                while chunk := stream.read(1024 * 1024):
                    fh.write(chunk)
        except OSError as exc:
            os.unlink(temp)
            raise OutOfResources(f"cannot spool the object to the cache: {exc}") from exc
        return self.ingest_temp(temp, origin, expected_study=expected_study)

    def ingest_path(
        self, path: str | Path, origin: Origin, *, expect: tuple[int, int] | None = None
    ) -> IngestResult:
        """Ingest a file from anywhere (hot folder, import); the source file is left alone.

        The copy is refused when the source changed while it was read, or when its (size,
        mtime_ns) differs from `expect` (the hot folder's settled signature): a file still
        being written is never stored from a mixed snapshot.
        """
        try:
            with open(path, "rb") as src:
                before = _signature(os.fstat(src.fileno()))
                fh, temp = self.cache.new_temp()
                try:
                    with fh:
                        while chunk := src.read(1024 * 1024):
                            fh.write(chunk)
                except BaseException:
                    _unlink_quietly(temp)
                    raise
                after = _signature(os.fstat(src.fileno()))
        except OSError as exc:
            raise OutOfResources(f"cannot copy {path} into the cache: {exc}") from exc
        if before != after or (expect is not None and before != expect):
            _unlink_quietly(temp)
            raise InvalidDataset("the file changed while it was read; it is still being written")
        return self.ingest_temp(temp, origin)

    # ---- the pipeline ------------------------------------------------------------------
    def _ingest(
        self,
        temp: Path,
        origin: Origin,
        expected_sop_class: str | None,
        expected_sop_instance: str | None,
        expected_study: str | None = None,
        received: Received | None = None,
    ) -> IngestResult:
        size = received.size if received is not None else os.stat(temp).st_size
        if self.max_object_bytes and size > self.max_object_bytes:
            raise OutOfResources(
                f"object of {size} bytes exceeds edge.max_object_bytes={self.max_object_bytes}"
            )
        # The acceptance rule and the header, from one pass over the bytes (shared/intake.py).
        accepted = intake.accept(temp, received.fd if received is not None else None)
        if not accepted.part10:
            # A bare dataset (dicomweb-client, in-memory writers): stored as Part-10.
            accepted = acceptance.rewrite_as_part10(temp, accepted)
            received, size = None, accepted.size  # a new file: its own bytes and checksum
        header = intake.header(accepted, temp)
        _check_expected(header, expected_sop_class, expected_sop_instance, expected_study)
        if self.min_free_bytes and self.cache.free_bytes() < self.min_free_bytes:
            raise OutOfResources(
                f"cache filesystem has less than edge.min_free_bytes={self.min_free_bytes} free"
            )
        try:
            crc = received.crc32c if received is not None else crc32c_file(temp)
            fsync_file(temp, received.fd if received is not None else None)
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
            # bytes adopted our file (keep it), or the instance was evicted or replaced (its
            # row points elsewhere) and is sent again, or its file was lost: drop our link.
            row = self._row(header.sop_instance_uid)
            adopted = (
                row is not None
                and (row["size"], row["crc32c"], row["path"]) == (size, crc, relpath)
                and State(row["state"]) in LOCAL_STATES
            )
            if not adopted:
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
                "SELECT size, crc32c, state, path FROM instances WHERE sop_instance_uid = ?",
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
                "SELECT id, size, crc32c, state, path FROM instances WHERE sop_instance_uid = ?",
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
        if State(row["state"]) in HIDDEN_STATES:
            # deleted here: its UID stays registered until the purge (shared/deletion.py);
            # neither the same nor other bytes bring it back, `studies undelete` does
            raise InstanceDeleted(f"{header.sop_instance_uid} was deleted on this node")
        if row["size"] == size and row["crc32c"] == crc:
            return IngestResult(Outcome.DUPLICATE, header, size, crc, row["path"])
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
        return self._replace(temp, header, origin, size, crc, relpath)

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
        self, temp: Path, header: Header, origin: Origin, size: int, crc: str, relpath: str
    ) -> IngestResult:
        """New bytes for an existing instance, in the durable write order (module docstring)."""
        try:
            new_rel, new_path = self._link_version(temp, relpath)
        except OSError as exc:
            raise OutOfResources(f"cannot write to the cache: {exc}") from exc
        try:
            with self.db.write() as conn:
                old_rel = self._switch(conn, header, size, crc, new_rel)
        except BaseException as exc:
            _unlink_quietly(new_path)
            if isinstance(exc, sqlite3.Error):
                raise IndexUnavailable(f"index write failed: {exc}") from exc
            raise
        if old_rel is None:  # the same bytes were stored meanwhile
            _unlink_quietly(new_path)
            return IngestResult(Outcome.DUPLICATE, header, size, crc, relpath)
        if old_rel != new_rel:
            _retire(self.cache.root / old_rel)
        log.warning(
            "duplicate with different bytes replaced the stored version "
            "sop_instance_uid=%s calling_ae=%s policy=replace",
            header.sop_instance_uid,
            origin.calling_ae,
        )
        return IngestResult(Outcome.REPLACED, header, size, crc, new_rel)

    def _link_version(self, temp: Path, relpath: str) -> tuple[str, Path]:
        """A create-only link of the (fsynced) temp file to a fresh name beside `relpath`."""
        for _ in range(8):
            rel = version_relpath(relpath)
            path = self.cache.root / rel
            if durable_link(temp, path):
                return rel, path
        raise OSError("no free name for the replacement file")

    def _switch(
        self, conn: sqlite3.Connection, header: Header, size: int, crc: str, new_rel: str
    ) -> str | None:
        """Inside one transaction: check the row and point it at the new file.

        Returns the old path, or None when the row already holds these bytes."""
        row = conn.execute(
            "SELECT id, state, path, size, crc32c FROM instances WHERE sop_instance_uid = ?",
            (header.sop_instance_uid,),
        ).fetchone()
        if row is None:
            raise IndexUnavailable(f"{header.sop_instance_uid} was removed during replace; retry")
        if (row["size"], row["crc32c"]) == (size, crc):
            return None
        state = State(row["state"])
        if State.CACHED not in TRANSITIONS[state]:
            # evicting or recalling: replacing the file under that work would corrupt it
            raise InstanceBusy(
                f"{header.sop_instance_uid} is {state}; replace it once that finishes"
            )
        transition(
            conn,
            row["id"],
            state,
            State.CACHED,
            size=size,
            crc32c=crc,
            path=new_rel,
            transfer_syntax=header.transfer_syntax,
            attempts=0,
            next_attempt_at=0,
            last_error="",
        )  # cannot miss: the state was read in this same write transaction
        return str(row["path"])


def _check_expected(
    header: Header,
    sop_class: str | None,
    sop_instance: str | None,
    study: str | None,
) -> None:
    """The dataset's UIDs against what the request said (command, URL)."""
    if sop_class is not None and sop_class != header.sop_class_uid:
        raise UIDMismatch(f"command SOP Class {sop_class} != dataset {header.sop_class_uid}")
    if sop_instance is not None and sop_instance != header.sop_instance_uid:
        raise UIDMismatch(
            f"command SOP Instance {sop_instance} != dataset {header.sop_instance_uid}"
        )
    if study is not None and study != header.study_uid:
        raise UIDMismatch("the instance's Study Instance UID differs from the URL's")


def version_relpath(relpath: str) -> str:
    """A fresh cache path in the same directory as `relpath` (the shape of every cache path:
    `ab/cd/<64 hex>.dcm`, its first four digits kept), for the new bytes of a replace."""
    directory, name = relpath.rsplit("/", 1)
    return f"{directory}/{name[:4]}{secrets.token_hex(30)}.dcm"


def _retire(old: Path) -> None:
    """Unlink the replaced file once the index points at its successor; a crash before this
    leaves it to start-up reconcile."""
    try:
        os.unlink(old)
        fsync_dir(old.parent)
    except FileNotFoundError:
        pass  # an evicted instance had no file
    except OSError as exc:
        log.warning("replaced file not removed path=%s error=%s; reconcile will", old, exc)


def _signature(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


__all__ = ["IngestResult", "Ingestor", "Origin", "Outcome", "Received"]
