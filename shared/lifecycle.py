"""The instance lifecycle: one enum, one transition table, one transition function.

Every state change of an instance row goes through `transition`, a conditional
`UPDATE ... WHERE id=? AND state=?`, so two processes can never both claim a row.
"""

from __future__ import annotations

import sqlite3
import time
from enum import StrEnum
from typing import Any


class State(StrEnum):
    CACHED = "cached"
    UPLOADING = "uploading"
    SYNCED = "synced"
    EVICTING = "evicting"
    EVICTED = "evicted"
    RECALLING = "recalling"
    FAILED = "failed"
    CONFLICT = "conflict"
    LOST = "lost"
    # deletion (issue 10): hidden at once, bytes kept for retention.delete_grace_days
    DELETED = "deleted"
    PURGING = "purging"
    PURGED = "purged"


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    # a damaged cache file with no verified cloud copy -> lost (file quarantined)
    S.CACHED: frozenset({S.UPLOADING, S.CACHED, S.LOST, S.DELETED}),
    # transient error -> back to cached with a next attempt time; verified -> synced;
    # the local file fails its own crc32c while being uploaded -> lost
    S.UPLOADING: frozenset({S.SYNCED, S.CACHED, S.FAILED, S.CONFLICT, S.LOST}),
    # replaced bytes (edge.duplicates = "replace") need a new upload; a damaged cache file is
    # quarantined and its verified cloud copy fetched again (-> recalling)
    S.SYNCED: frozenset({S.EVICTING, S.CACHED, S.RECALLING, S.DELETED}),
    # file deleted -> evicted; eviction abandoned (a retrieve touched or is serving it) -> synced
    S.EVICTING: frozenset({S.EVICTED, S.SYNCED}),
    S.EVICTED: frozenset({S.RECALLING, S.CACHED, S.DELETED}),
    # recalled and verified -> synced; download failed -> evicted; the store has no object
    # any more -> lost
    S.RECALLING: frozenset({S.SYNCED, S.EVICTED, S.LOST}),
    S.FAILED: frozenset({S.CACHED, S.LOST, S.DELETED}),
    S.CONFLICT: frozenset({S.CACHED, S.LOST, S.DELETED}),
    # no intact copy anywhere: sent again (ingest) -> cached; an admin retry after putting
    # the object back in the bucket -> recalling
    S.LOST: frozenset({S.CACHED, S.RECALLING, S.DELETED}),
    # ---- deletion (shared/deletion.py, sync/purge.py) ----
    # Only resting states are deleted (a row mid-upload/eviction/recall is waited for).
    # Undelete returns to the state the row was deleted from (`deleted_from`), except that a
    # synced row's cache file went at deletion: it comes back `evicted` (recalled on demand).
    # The purge claims a row once its grace is over (-> purging)...
    S.DELETED: frozenset({S.CACHED, S.EVICTED, S.FAILED, S.CONFLICT, S.LOST, S.PURGING}),
    # ...journals its purge tombstone, deletes its objects and file, and ends purged. Never
    # back: once claimed a purge is finished (also after a crash, see PURGE_RESUMED).
    S.PURGING: frozenset({S.PURGED}),
    # a purged instance sent again is a new instance (ingest, like lost -> cached)
    S.PURGED: frozenset({S.CACHED}),
}

# States in which the instance's file is in the cache and may be served.
LOCAL_STATES = frozenset({S.CACHED, S.UPLOADING, S.SYNCED, S.FAILED, S.CONFLICT})
# States whose row vouches for a verified cloud copy of exactly the row's bytes (invariant 2):
# a damaged cache file of these is replaced from the bucket, never served.
CLOUD_VERIFIED_STATES = frozenset({S.SYNCED, S.EVICTING, S.EVICTED, S.RECALLING})
# States a crashed process can leave behind, and where start-up puts them back.
RECOVERY: dict[State, State] = {
    S.UPLOADING: S.CACHED,
    S.EVICTING: S.SYNCED,
    S.RECALLING: S.EVICTED,
}
# Crash-interrupted states that are finished, not rolled back, when their owner starts again:
# a purge may have deleted some objects already, so going back to `deleted` (from which an
# undelete would promise bytes that are gone) is never safe; the sync agent completes it.
PURGE_RESUMED: dict[State, State] = {S.PURGING: S.PURGED}
# Hidden from every query and retrieve (C-FIND, C-MOVE/C-GET, QIDO/WADO, the browser).
HIDDEN_STATES = frozenset({S.DELETED, S.PURGING, S.PURGED})
HIDDEN_SQL = ", ".join(f"'{s.value}'" for s in sorted(HIDDEN_STATES))
# States a row may be deleted from (resting states; the others are waited for).
DELETABLE_STATES = frozenset(s for s in State if S.DELETED in TRANSITIONS[s])
# Columns a transition may set besides the state.
_SETTABLE = frozenset(
    {
        "attempts",
        "next_attempt_at",
        "last_error",
        "object_key",
        "synced_at",
        "path",
        "size",
        "crc32c",
        "last_access",
        "transfer_syntax",
        # deletion: when and from which state
        "deleted_at",
        "deleted_from",
        # 0 to journal the row again: a tombstone, or a correction's new bytes once uploaded
        "catalog_seq",
    }
)


class IllegalTransition(ValueError):
    pass


def check_transition(src: State, dst: State) -> None:
    if dst not in TRANSITIONS[src]:
        raise IllegalTransition(f"{src} -> {dst} is not allowed")


def transition(
    conn: sqlite3.Connection, instance_id: int, src: State, dst: State, **fields: Any
) -> bool:
    """Move one instance from `src` to `dst`; False when another actor changed it first.

    The caller owns the transaction (this runs inside it); fields are extra columns to set.
    """
    check_transition(src, dst)
    bad = set(fields) - _SETTABLE
    if bad:
        raise ValueError(f"columns not settable by a transition: {sorted(bad)}")
    cols = ["state = ?", "state_changed_at = ?"]
    args: list[Any] = [dst.value, time.time()]
    for name, value in fields.items():
        cols.append(f"{name} = ?")
        args.append(value)
    args += [instance_id, src.value]
    cur = conn.execute(f"UPDATE instances SET {', '.join(cols)} WHERE id = ? AND state = ?", args)
    return cur.rowcount == 1
