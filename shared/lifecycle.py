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


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    # a damaged cache file with no verified cloud copy -> lost (file quarantined)
    S.CACHED: frozenset({S.UPLOADING, S.CACHED, S.LOST}),
    # transient error -> back to cached with a next attempt time; verified -> synced;
    # the local file fails its own crc32c while being uploaded -> lost
    S.UPLOADING: frozenset({S.SYNCED, S.CACHED, S.FAILED, S.CONFLICT, S.LOST}),
    # replaced bytes (edge.duplicates = "replace") need a new upload; a damaged cache file is
    # quarantined and its verified cloud copy fetched again (-> recalling)
    S.SYNCED: frozenset({S.EVICTING, S.CACHED, S.RECALLING}),
    # file deleted -> evicted; eviction abandoned (a retrieve touched or is serving it) -> synced
    S.EVICTING: frozenset({S.EVICTED, S.SYNCED}),
    S.EVICTED: frozenset({S.RECALLING, S.CACHED}),
    # recalled and verified -> synced; download failed -> evicted; the store has no object
    # any more -> lost
    S.RECALLING: frozenset({S.SYNCED, S.EVICTED, S.LOST}),
    S.FAILED: frozenset({S.CACHED, S.LOST}),
    S.CONFLICT: frozenset({S.CACHED, S.LOST}),
    # no intact copy anywhere: sent again (ingest) -> cached; an admin retry after putting
    # the object back in the bucket -> recalling
    S.LOST: frozenset({S.CACHED, S.RECALLING}),
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
