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


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.CACHED: frozenset({S.UPLOADING, S.CACHED}),
    # transient error -> back to cached with a next attempt time; verified -> synced
    S.UPLOADING: frozenset({S.SYNCED, S.CACHED, S.FAILED, S.CONFLICT}),
    # replaced bytes (edge.duplicates = "replace") need a new upload
    S.SYNCED: frozenset({S.EVICTING, S.CACHED}),
    # file deleted -> evicted; eviction abandoned (e.g. a retrieve touched it) -> synced
    S.EVICTING: frozenset({S.EVICTED, S.SYNCED}),
    S.EVICTED: frozenset({S.RECALLING, S.CACHED}),
    # recalled and verified -> synced; download failed -> evicted
    S.RECALLING: frozenset({S.SYNCED, S.EVICTED}),
    S.FAILED: frozenset({S.CACHED}),
    S.CONFLICT: frozenset({S.CACHED}),
}

# States in which the instance's file is in the cache and may be served.
LOCAL_STATES = frozenset({S.CACHED, S.UPLOADING, S.SYNCED, S.FAILED, S.CONFLICT})
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
