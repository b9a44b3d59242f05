"""Deleting, undeleting and holding studies: the one path every door takes.

The edge's CLI and console, the sync agent applying a deletion requested through the cloud API
(`control/<site>/deletions/`) and `retention.auto_purge` all call `delete` and `undelete`
here; retention and legal holds are decided by the pure `shared.retention` inside the same
index transaction that changes the rows, so a hold placed meanwhile cannot be missed.

A deletion is a lifecycle state, not a DELETE (shared/lifecycle.py): every visible instance of
the target goes `-> deleted` through `transition()` with `deleted_at` (its grace starts),
`deleted_from` (where an undelete returns it) and `catalog_seq = 0` (the sync agent journals a
tombstone, so the cloud catalog and a restore agree). Study and series counters are recounted
from visible rows, so C-FIND, QIDO and the browser stop finding it in the same commit. After
the commit the cache files of synced rows are removed (their verified copy stays in the bucket
for the grace period); rows without a verified cloud copy (cached, failed, conflict) keep
their file, hidden, since it is the only copy until the purge. Rows mid-work (uploading,
evicting, recalling) are waited for, up to `busy_wait_s`.

Callers audit (they know who asked): `Outcome` says what changed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import RetentionConfig
from shared.errors import BadRequest, Conflict, Forbidden, InstanceBusy, NotFound
from shared.expiry import ACTIVE_HOLD_SQL, study_retention
from shared.index import Database
from shared.lifecycle import DELETABLE_STATES, HIDDEN_SQL, HIDDEN_STATES, State, transition
from shared.retention import may_delete
from shared.rows import from_row, recount
from shared.uids import is_valid_uid

log = logging.getLogger("hpacs.deletion")

Clock = Callable[[], float]
HOLD_KINDS = ("study", "patient")


@dataclass(frozen=True)
class Target:
    """A study, one of its series, or one instance."""

    study_uid: str
    series_uid: str = ""
    sop_instance_uid: str = ""

    def __post_init__(self) -> None:
        for what, uid in (
            ("study", self.study_uid),
            ("series", self.series_uid),
            ("instance", self.sop_instance_uid),
        ):
            if (uid or what == "study") and not is_valid_uid(uid):
                raise BadRequest(f"not a valid {what} UID: {uid[:80]!r}")

    @property
    def level(self) -> str:
        return "instance" if self.sop_instance_uid else ("series" if self.series_uid else "study")

    def describe(self) -> str:
        uid = self.sop_instance_uid or self.series_uid or self.study_uid
        return f"{self.level} {uid}"


@dataclass(frozen=True)
class Actor:
    """Who asks: a name for the audit trail, and whether they may override retention."""

    name: str
    admin: bool = False


@dataclass
class Outcome:
    target: Target
    instances: int = 0  # rows changed
    files_removed: int = 0
    already: int = 0  # rows already in the requested state (or purged, for an undelete)
    override: str = ""  # the retention that was overridden, for the audit trail
    study_uids: list[str] = field(default_factory=list)

    def summary(self, verb: str) -> str:
        extra = f", {self.already} already" if self.already else ""
        return f"{verb} {self.target.describe()}: {self.instances} instance(s){extra}"


# ---- facts and holds --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    id: int
    kind: str
    value: str
    reason: str
    placed_by: str
    placed_at: float
    released_at: float | None = None
    bucket: str = "pending"

    def describe(self) -> str:
        """For refusals and listings; a patient hold shows its id, not the PatientID."""
        what = f"study {self.value}" if self.kind == "study" else "a patient"
        return f"hold {self.id} on {what}: {self.reason}"


_HOLD_COLS = "id, kind, value, reason, placed_by, placed_at, released_at, bucket"


def _hold(r: sqlite3.Row) -> Hold:
    return from_row(Hold, r)


def holds_on(conn: sqlite3.Connection, study_uid: str, patient_id: str) -> list[Hold]:
    """The legal holds in force on a study, directly or through its patient."""
    rows = conn.execute(
        f"SELECT {_HOLD_COLS} FROM holds WHERE released_at IS NULL AND "
        "((kind = 'study' AND value = ?) OR (kind = 'patient' AND value = ? AND value <> '')) "
        "ORDER BY id",
        (study_uid, patient_id),
    ).fetchall()
    return [_hold(r) for r in rows]


def list_holds(conn: sqlite3.Connection, active_only: bool = True) -> list[Hold]:
    where = "WHERE released_at IS NULL" if active_only else ""
    rows = conn.execute(f"SELECT {_HOLD_COLS} FROM holds {where} ORDER BY id").fetchall()
    return [_hold(r) for r in rows]


def place_hold(db: Database, kind: str, value: str, reason: str, by: str, now: float) -> Hold:
    """A legal hold on a study (value: its UID, which must be in the index) or a patient
    (value: the PatientID, present or future studies alike)."""
    if kind not in HOLD_KINDS:
        raise BadRequest(f"a hold is on a study or a patient, not {kind!r}")
    if not reason.strip():
        raise BadRequest("a legal hold needs a reason")
    value = value.strip()
    if kind == "study" and not is_valid_uid(value):
        raise BadRequest(f"not a valid study UID: {value[:80]!r}")
    if kind == "patient" and not value:
        raise BadRequest("a patient hold needs a PatientID")
    with db.write() as conn:
        if (
            kind == "study"
            and not conn.execute("SELECT 1 FROM studies WHERE study_uid = ?", (value,)).fetchone()
        ):
            raise NotFound(f"no study {value}")
        cur = conn.execute(
            "INSERT INTO holds (kind, value, reason, placed_by, placed_at) VALUES (?, ?, ?, ?, ?)",
            (kind, value, reason.strip()[:500], by, now),
        )
        row = conn.execute(f"SELECT {_HOLD_COLS} FROM holds WHERE id = ?", (cur.lastrowid,))
        return _hold(row.fetchone())


def release_holds(
    db: Database, kind: str, value: str, by: str, reason: str, now: float
) -> list[Hold]:
    """Release every hold in force on this study or patient; NotFound when there is none."""
    with db.write() as conn:
        found = [
            _hold(r)
            for r in conn.execute(
                f"SELECT {_HOLD_COLS} FROM holds WHERE kind = ? AND value = ? AND "
                "released_at IS NULL ORDER BY id",
                (kind, value.strip()),
            )
        ]
        if not found:
            raise NotFound(f"no legal hold in force on that {kind}")
        conn.execute(
            "UPDATE holds SET released_at = ?, released_by = ?, release_reason = ? "
            "WHERE kind = ? AND value = ? AND released_at IS NULL",
            (now, by, reason.strip()[:500], kind, value.strip()),
        )
    return found


# ---- delete and undelete ----------------------------------------------------------------------


def _study(conn: sqlite3.Connection, t: Target) -> sqlite3.Row:
    st = conn.execute(
        "SELECT id, study_uid, patient_id FROM studies WHERE study_uid = ?", (t.study_uid,)
    ).fetchone()
    if st is None:
        raise NotFound(f"no study {t.study_uid}")
    return st


def _rows(conn: sqlite3.Connection, study_id: int, t: Target) -> list[sqlite3.Row]:
    sql = (
        "SELECT i.id, i.state, i.path, i.series_id, i.deleted_from FROM instances i "
        "JOIN series se ON se.id = i.series_id WHERE i.study_id = ?"
    )
    args: list[object] = [study_id]
    if t.series_uid:
        sql += " AND se.series_uid = ?"
        args.append(t.series_uid)
    if t.sop_instance_uid:
        sql += " AND i.sop_instance_uid = ?"
        args.append(t.sop_instance_uid)
    rows = conn.execute(sql, args).fetchall()
    if not rows:
        raise NotFound(f"no {t.describe()} in study {t.study_uid}")
    return rows


def delete(
    db: Database,
    cache_dir: Path,
    cfg: RetentionConfig,
    target: Target,
    actor: Actor,
    *,
    reason: str = "",
    override: bool = False,
    clock: Clock = time.time,
    busy_wait_s: float = 30.0,
) -> Outcome:
    """Hide the target at once (see the module docstring); Forbidden when retention or a
    legal hold says no, NotFound when there is nothing visible to delete."""
    deadline = time.monotonic() + busy_wait_s
    while True:
        now = clock()
        with db.write() as conn:
            out, files = _delete_rows(conn, cfg, target, actor, reason, override, now)
        if out is not None:
            break
        if time.monotonic() >= deadline:
            raise InstanceBusy(
                f"{target.describe()}: instances are being uploaded, evicted or recalled; "
                "try again in a moment"
            )
        time.sleep(0.1)
    out.files_removed = _remove_files(cache_dir, files)
    log.info(
        "deleted %s instances=%d files_removed=%d by=%s override=%s",
        target.describe(),
        out.instances,
        out.files_removed,
        actor.name,
        bool(out.override),
    )
    return out


def _delete_rows(
    conn: sqlite3.Connection,
    cfg: RetentionConfig,
    t: Target,
    actor: Actor,
    reason: str,
    override: bool,
    now: float,
) -> tuple[Outcome | None, list[str]]:
    """One attempt inside a write transaction: (None, []) when a row is busy."""
    st = _study(conn, t)
    rows = _rows(conn, st["id"], t)
    visible = [r for r in rows if State(r["state"]) not in HIDDEN_STATES]
    if not visible:
        raise NotFound(f"{t.describe()} is already deleted")
    if any(State(r["state"]) not in DELETABLE_STATES for r in visible):
        return None, []
    holds = [h.describe() for h in holds_on(conn, st["study_uid"], st["patient_id"])]
    ret = study_retention(conn, st["id"], cfg)
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    decision = may_delete(
        ret, today, holds=holds, override=override, admin=actor.admin, reason=reason
    )
    if not decision.allowed:
        raise Forbidden(f"{t.describe()}: {decision.reason}")
    files = []
    for r in visible:
        src = State(r["state"])
        transition(
            conn, r["id"], src, State.DELETED, deleted_at=now, deleted_from=src.value, catalog_seq=0
        )
        if src is State.SYNCED:  # a verified copy is in the bucket: the cache file goes now
            files.append(r["path"])
    recount(conn, [st["id"]], sorted({r["series_id"] for r in visible}))
    out = Outcome(t, instances=len(visible), already=len(rows) - len(visible))
    out.override = decision.reason if decision.override_used else ""
    out.study_uids = [st["study_uid"]]
    return out, files


def _remove_files(cache_dir: Path, relpaths: list[str]) -> int:
    """Unlink the cache files of deleted rows; a crash before this leaves them to the purge."""
    n = 0
    for rel in relpaths:
        try:
            os.unlink(cache_dir / rel)
            n += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cache file of a deleted instance not removed path=%s error=%s", rel, exc)
    return n


def undelete(db: Database, target: Target, actor: Actor) -> Outcome:
    """Bring a deleted target back while its grace lasts: each row returns to the state it was
    deleted from, a synced one as `evicted` (its file went; it is recalled on demand, the
    same verified bytes). Conflict when everything was purged already."""
    with db.write() as conn:
        st = _study(conn, target)
        rows = _rows(conn, st["id"], target)
        deleted = [r for r in rows if r["state"] == State.DELETED.value]
        gone = [r for r in rows if r["state"] in (State.PURGING.value, State.PURGED.value)]
        if not deleted:
            if gone:
                raise Conflict(f"{target.describe()} was purged: its bytes are gone")
            raise NotFound(f"{target.describe()} is not deleted")
        for r in deleted:
            back = State(r["deleted_from"] or State.EVICTED.value)
            if back is State.SYNCED:
                back = State.EVICTED
            transition(
                conn, r["id"], State.DELETED, back, deleted_at=None, deleted_from="", catalog_seq=0
            )
        recount(conn, [st["id"]], sorted({r["series_id"] for r in deleted}))
    out = Outcome(target, instances=len(deleted), already=len(gone), study_uids=[st["study_uid"]])
    log.info(
        "undeleted %s instances=%d purged=%d by=%s",
        target.describe(),
        out.instances,
        out.already,
        actor.name,
    )
    return out


def due_for_purge(conn: sqlite3.Connection, cutoff: float, limit: int) -> list[int]:
    """Deleted rows whose grace ended at `cutoff` and that no legal hold covers."""
    rows = conn.execute(
        "SELECT i.id FROM instances i JOIN studies s ON s.id = i.study_id "
        f"WHERE i.state = ? AND i.deleted_at <= ? AND NOT EXISTS ({ACTIVE_HOLD_SQL}) "
        "ORDER BY i.id LIMIT ?",
        (State.DELETED.value, cutoff, limit),
    ).fetchall()
    return [int(r[0]) for r in rows]


def visible_sql(alias: str = "i") -> str:
    """A WHERE term keeping visible instances (the queries' and retrieves' filter)."""
    return f"{alias}.state NOT IN ({HIDDEN_SQL})"
