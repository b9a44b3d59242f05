"""Corrections: patient/study attributes rewritten in every instance of a study (issue 10).

`hpacs-edge studies modify UID --set KEY=VALUE`, `hpacs-edge patients merge`, and the console's
correction form all call `Corrector`. Per instance, in the durable write order of a replace
(edge/ingest.py):

1. the instance is made local: an evicted one is recalled (edge/locate.py), an `evicting` one
   has its eviction cancelled;
2. its bytes are read through the verifying reader and rewritten (edge/rewrite.py: only the
   changed elements differ) into a temp file of the cache; a re-run that finds the new values
   already there writes nothing;
3. the original bytes must be kept in the bucket: a row that never reached it (`cached`,
   `uploading`, `failed`) has them uploaded first, create-only, to the key the sync agent
   would have used; synced and evicted rows already have them there, a conflict row at its
   conflict key;
4. the new file is checked (acceptance rule, header values), fsynced and linked create-only
   to a fresh cache name, its directory fsynced;
5. one index transaction re-reads the row (bytes changed meanwhile: start this instance
   again), moves it to `cached` through `shared.lifecycle.transition` with the new path, size
   and crc32c, the revision key the sync agent uploads the new bytes to
   (`shared.keys.revision_key`) and `catalog_seq = 0` (journalled again once uploaded), and
   sets the study's columns;
6. only then is the old file unlinked.

A kill -9 anywhere leaves each instance with its old bytes and row or its new bytes and row;
start-up reconcile removes the loser file (the replace leftover rule) and reports the
unfinished correction (a `correction.pending.<study>` setting, removed when a correction of
that study completes); running the same correction again completes it.

A correction is refused for a study that `correction_blocker` names a reason for: the seam
where deletion, retention and legal holds plug their predicates in.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import correctable, rewrite
from edge.cache import Cache
from edge.ingest import _retire, version_relpath
from edge.locate import InstanceRef, Locator, Recaller
from shared import acceptance
from shared.checksum import crc32c_file
from shared.dicom import read_header
from shared.errors import Conflict, InstanceBusy, NotFound, ObjectExists, OutOfResources
from shared.fsutil import durable_link, fsync_file
from shared.index import Database
from shared.keys import revision_key, upload_key
from shared.lifecycle import (
    CLOUD_VERIFIED_STATES,
    LOCAL_STATES,
    TRANSITIONS,
    State,
    transition,
)
from shared.store import ObjectStore

log = logging.getLogger("hpacs.edge.corrections")

PENDING_PREFIX = "correction.pending."
PASSES = 4  # an instance whose row keeps changing under us is given up after this many
_COLUMNS = (
    "i.id, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax, i.path, i.state, "
    "i.study_id, i.size, i.crc32c, i.object_key, se.series_uid, s.study_uid"
)


def correction_blocker(conn: sqlite3.Connection, study_uid: str) -> str | None:
    """Why this study may not be corrected now, or None. Called inside the transactions that
    start a correction and switch each instance. Deletion, retention and legal holds add their
    predicates here. A study with deleted instances waiting for their purge is refused (its
    hidden rows would be rewritten, and an undelete would bring back bytes the admin did not
    correct); a legal hold does not block a correction: the original bytes stay in the bucket
    under their versioned key, which is what a hold preserves."""
    row = conn.execute(
        "SELECT count(*) FROM instances i JOIN studies s ON s.id = i.study_id"
        " WHERE s.study_uid = ? AND i.state IN (?, ?)",
        (study_uid, State.DELETED.value, State.PURGING.value),
    ).fetchone()
    if row[0]:
        return (
            f"study {study_uid} has {row[0]} deleted instance(s) waiting for their purge: "
            "undelete it (hpacs-edge studies undelete) or let the purge finish first"
        )
    return None


@dataclass
class Report:
    """What one correction did, for the CLI, the console and the audit record."""

    study_uids: list[str] = field(default_factory=list)
    rewritten: int = 0
    unchanged: int = 0  # already held the new values (a re-run)
    recalled: int = 0
    originals_uploaded: int = 0
    lost: list[str] = field(default_factory=list)  # SOP UIDs with no bytes anywhere: skipped

    def summary(self) -> str:
        text = (
            f"studies={len(self.study_uids)} rewritten={self.rewritten} "
            f"unchanged={self.unchanged} recalled={self.recalled} "
            f"originals_uploaded={self.originals_uploaded}"
        )
        return text + (f" lost={len(self.lost)}" if self.lost else "")


@dataclass(frozen=True)
class _Row:
    ref: InstanceRef
    object_key: str
    series_uid: str
    study_uid: str


class Corrector:
    """Corrections on one edge: its index, cache, object store (the originals go there) and
    recaller (evicted instances come back before they are rewritten)."""

    def __init__(
        self,
        db: Database,
        cache: Cache,
        store: ObjectStore | Callable[[], ObjectStore] | None,
        recaller: Recaller | None,
    ) -> None:
        self.db = db
        self.cache = cache
        self._store = store
        self.locator = Locator(db, cache, recaller)

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            raise Conflict(
                "corrections keep the original bytes in the object store, and none is "
                "configured: set sync.store_url"
            )
        if callable(self._store):
            self._store = self._store()
        return self._store

    # ---- entry points -------------------------------------------------------------------
    def modify_study(self, study_uid: str, changes: dict[str, str], actor: str = "") -> Report:
        """Correct one study; `changes` come from `correctable.parse_sets`/`check_changes`."""
        rep = Report()
        self._correct(study_uid, changes, actor, rep)
        return rep

    def modify_patient(self, patient_id: str, changes: dict[str, str], actor: str = "") -> Report:
        """Correct every study whose PatientID is `patient_id` (merging two patient IDs is
        this with `PatientID` among the changes)."""
        studies = self.studies_of(patient_id)
        if not studies:
            raise NotFound("no study has that PatientID")
        rep = Report()
        for uid in studies:
            self._correct(uid, changes, actor, rep)
        return rep

    def studies_of(self, patient_id: str) -> list[str]:
        rows = self.db.reader().execute(
            "SELECT study_uid FROM studies WHERE patient_id = ? ORDER BY id", (patient_id,)
        )
        return [r[0] for r in rows]

    # ---- one study ----------------------------------------------------------------------
    def _correct(self, study_uid: str, changes: dict[str, str], actor: str, rep: Report) -> None:
        _ = self.store  # refuse before anything changes when there is no object store
        with self.db.write() as conn:
            self._check(conn, study_uid)
            _check_unfinished(conn, study_uid, changes)
            marker = {"attributes": sorted(changes), "actor": actor, "started_at": time.time()}
            self.db.set_setting(conn, PENDING_PREFIX + study_uid, json.dumps(marker))
        log.info(
            "correction started study_uid=%s attributes=%s", study_uid, ",".join(sorted(changes))
        )
        for row in self._instances(study_uid):
            self._instance(row, changes, rep)
        with self.db.write() as conn:
            self._set_study(conn, study_uid, changes)
            conn.execute("DELETE FROM settings WHERE key = ?", (PENDING_PREFIX + study_uid,))
        rep.study_uids.append(study_uid)
        log.info("correction done study_uid=%s %s", study_uid, rep.summary())

    def _check(self, conn: sqlite3.Connection, study_uid: str) -> None:
        if conn.execute("SELECT 1 FROM studies WHERE study_uid = ?", (study_uid,)).fetchone():
            blocked = correction_blocker(conn, study_uid)
            if blocked:
                raise Conflict(f"study {study_uid} cannot be corrected: {blocked}")
            return
        raise NotFound(f"no study {study_uid} in the index")

    def _instances(self, study_uid: str) -> list[_Row]:
        rows = self.db.reader().execute(
            f"SELECT {_COLUMNS} FROM instances i JOIN series se ON se.id = i.series_id "
            "JOIN studies s ON s.id = i.study_id WHERE s.study_uid = ? ORDER BY i.id",
            (study_uid,),
        )
        return [_row(r) for r in rows.fetchall()]

    def _fresh(self, iid: int) -> _Row:
        r = (
            self.db.reader()
            .execute(
                f"SELECT {_COLUMNS} FROM instances i JOIN series se ON se.id = i.series_id "
                "JOIN studies s ON s.id = i.study_id WHERE i.id = ?",
                (iid,),
            )
            .fetchone()
        )
        if r is None:
            raise NotFound(f"instance row {iid} is gone")
        return _row(r)

    # ---- one instance -------------------------------------------------------------------
    def _instance(self, row: _Row, changes: dict[str, str], rep: Report) -> None:
        uid = row.ref.sop_instance_uid
        for _ in range(PASSES):
            state = State(row.ref.state)
            if state is State.LOST:
                rep.lost.append(uid)
                log.warning("correction skipped a lost instance sop_instance_uid=%s", uid)
                return
            if state not in LOCAL_STATES:  # evicted, evicting, recalling: bring it back
                self.locator.path(row.ref)
                rep.recalled += state is State.EVICTED
                row = self._fresh(row.ref.id)
                continue
            temp = self._rewritten(row, changes)
            if temp is None:
                rep.unchanged += 1
                return
            try:
                done = self._commit(row, temp, changes, rep)
            finally:
                temp.unlink(missing_ok=True)
            if done:
                rep.rewritten += 1
                return
            row = self._fresh(row.ref.id)  # the row changed under us: again from its bytes
        raise InstanceBusy(f"{uid} kept changing while it was corrected; run the correction again")

    def _rewritten(self, row: _Row, changes: dict[str, str]) -> Path | None:
        """The new bytes in a temp file of the cache, checked; None when nothing changes."""
        fh, temp = self.cache.new_temp(".correction")
        try:
            with fh, self.locator.open(row.ref, reader="correction") as src:
                changed = rewrite.rewrite(src, fh, changes)
            if changed:
                _check_written(temp, row.ref.sop_instance_uid, changes)
                fsync_file(temp)
                return temp
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise OutOfResources(f"cannot write the corrected file: {exc}") from exc
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        temp.unlink(missing_ok=True)
        return None

    def _commit(self, row: _Row, temp: Path, changes: dict[str, str], rep: Report) -> bool:
        """Keep the original, link the new file, switch the row; False if the row changed."""
        ref = row.ref
        if State(ref.state) not in CLOUD_VERIFIED_STATES | {State.CONFLICT}:
            self._keep_original(row)
            rep.originals_uploaded += 1
        size, crc = temp.stat().st_size, crc32c_file(temp)
        new_rel = self._link(temp, ref.path)
        new_path = self.cache.root / new_rel
        try:
            with self.db.write() as conn:
                old = self._switch(conn, row, new_rel, size, crc, changes)
        except BaseException:
            new_path.unlink(missing_ok=True)
            raise
        if old is None:
            new_path.unlink(missing_ok=True)
            return False
        if old in LOCAL_STATES or old is State.EVICTING:
            _retire(self.cache.root / ref.path)
        return True

    def _keep_original(self, row: _Row) -> None:
        """Upload the current bytes create-only where the sync agent would (they may never
        have reached the bucket): what the correction replaces stays retrievable."""
        ref = row.ref
        key = upload_key(row.study_uid, row.series_uid, ref.sop_instance_uid, row.object_key)
        path = self.cache.root / ref.path  # just read through the verifying reader
        try:
            info = self.store.put(
                key, path, content_type="application/dicom", metadata={"crc32c": ref.crc32c}
            )
        except ObjectExists:
            found = self.store.head(key)
            if found is None or found.crc32c != ref.crc32c:
                raise Conflict(
                    f"{ref.sop_instance_uid}: other bytes are already at {key}; resolve that "
                    "upload conflict before correcting this study"
                ) from None
            return
        if info.crc32c != ref.crc32c:  # our own create, damaged on the way: let a retry create it
            self.store.delete(key)
            raise Conflict(f"{key}: the store holds other bytes than were sent; retry")

    def _link(self, temp: Path, relpath: str) -> str:
        for _ in range(8):
            rel = version_relpath(relpath)
            if durable_link(temp, self.cache.root / rel):
                return rel
        raise OutOfResources("no free cache name for the corrected file")

    def _switch(
        self,
        conn: sqlite3.Connection,
        row: _Row,
        new_rel: str,
        size: int,
        crc: str,
        changes: dict[str, str],
    ) -> State | None:
        """Inside one transaction: the row still holds the bytes we rewrote? Point it at the
        new ones. Returns the state it was in, or None when it changed meanwhile."""
        ref = row.ref
        blocked = correction_blocker(conn, row.study_uid)
        if blocked:
            raise Conflict(f"study {row.study_uid} cannot be corrected: {blocked}")
        cur = conn.execute(
            "SELECT state, path, size, crc32c FROM instances WHERE id = ?", (ref.id,)
        ).fetchone()
        if cur is None:
            raise NotFound(f"{ref.sop_instance_uid} was removed during the correction")
        if (cur["path"], cur["size"], cur["crc32c"]) != (ref.path, ref.size, ref.crc32c):
            return None
        state = State(cur["state"])
        if state is State.EVICTING:  # the evictor claimed it after our read: cancel that
            transition(conn, ref.id, State.EVICTING, State.SYNCED)
            state = State.SYNCED
        if State.CACHED not in TRANSITIONS[state]:
            return None  # recalling: wait for it on the next pass
        transition(
            conn,
            ref.id,
            state,
            State.CACHED,
            path=new_rel,
            size=size,
            crc32c=crc,
            object_key=revision_key(row.study_uid, row.series_uid, ref.sop_instance_uid, crc),
            attempts=0,
            next_attempt_at=0,
            last_error="",
            catalog_seq=0,
        )  # cannot miss: the state was read in this same write transaction
        self._set_study(conn, row.study_uid, changes)
        return state

    def _set_study(self, conn: sqlite3.Connection, study_uid: str, changes: dict[str, str]) -> None:
        cols = correctable.columns(changes)
        conn.execute(
            f"UPDATE studies SET {', '.join(f'{c} = ?' for c in cols)} WHERE study_uid = ?",
            [*cols.values(), study_uid],
        )


def _check_unfinished(conn: sqlite3.Connection, study_uid: str, changes: dict[str, str]) -> None:
    """An interrupted correction of other attributes must be completed first: finishing this
    one would clear its marker and leave those attributes mixed across the instances."""
    found = conn.execute(
        "SELECT value FROM settings WHERE key = ?", (PENDING_PREFIX + study_uid,)
    ).fetchone()
    if found is None:
        return
    try:
        earlier = set(json.loads(found[0]).get("attributes") or [])
    except (ValueError, AttributeError):
        earlier = set()
    missing = sorted(earlier - set(changes))
    if missing:
        raise Conflict(
            f"an earlier correction of {', '.join(missing)} of study {study_uid} was "
            "interrupted: run it again first, or include those attributes in this one"
        )


def _row(r: sqlite3.Row) -> _Row:
    return _Row(InstanceRef.from_row(r), r["object_key"], r["series_uid"], r["study_uid"])


def _check_written(path: Path, sop_instance_uid: str, changes: dict[str, str]) -> None:
    """The new file passes the acceptance rule and holds the new values under the same UID."""
    acceptance.check(path)
    h = read_header(path)
    if h.sop_instance_uid != sop_instance_uid:
        raise Conflict(f"{sop_instance_uid}: the rewritten object names another instance")
    for keyword, value in changes.items():
        got = getattr(h, correctable.CORRECTABLE[keyword].column)
        if str(got).rstrip(" ") != value:
            raise Conflict(f"{sop_instance_uid}: the rewritten {keyword} does not read back")


def pending(db: Database) -> dict[str, dict[str, Any]]:
    """Corrections that started and did not finish (study UID -> marker)."""
    out = {}
    for key, value in db.reader().execute(
        "SELECT key, value FROM settings WHERE key >= ? AND key < ?",
        (PENDING_PREFIX, PENDING_PREFIX[:-1] + "/"),
    ):
        try:
            out[key[len(PENDING_PREFIX) :]] = json.loads(value)
        except ValueError:
            out[key[len(PENDING_PREFIX) :]] = {}
    return out
