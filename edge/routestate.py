"""The route-job lifecycle: one enum, one transition table, one transition function.

Like `shared/lifecycle.py` for instances. Every state change of a `route_jobs` row goes
through `transition` (one job) or `transition_all` (a set of jobs selected by columns), a
conditional `UPDATE ... WHERE state = ?`, so a job changed by another actor (an admin's
retry, a second serve's recovery) is never overwritten, and the caller learns it lost.
Only the edge uses route jobs (ingest enqueues, the forwarder sends, `routes retry`
requeues), so the machine lives here, not in shared/.
"""

from __future__ import annotations

import sqlite3
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"


J = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    J.PENDING: frozenset({J.SENDING}),  # claimed by the forwarder
    # delivered; failed, back off and retry; gave up (max_attempts, permanent error)
    J.SENDING: frozenset({J.SENT, J.PENDING, J.DEAD}),
    J.SENT: frozenset(),  # final: pruned after its retention
    J.DEAD: frozenset({J.PENDING}),  # an admin's `hpacs-edge routes retry`
}
# States a crashed process can leave behind, and where start-up puts them back: a forward
# interrupted mid-way is sent again (at least once), never lost.
RECOVERY: dict[JobState, JobState] = {J.SENDING: J.PENDING}
# Columns a transition may set besides the state (and updated_at, always set).
_SETTABLE = frozenset({"attempts", "next_attempt_at", "last_error", "sent_at"})
# Columns a set-based transition may select jobs by.
_SELECTABLE = frozenset({"id", "route", "destination"})


class IllegalTransition(ValueError):
    pass


def check_transition(src: JobState, dst: JobState) -> None:
    if dst not in TRANSITIONS[src]:
        raise IllegalTransition(f"route job {src} -> {dst} is not allowed")


def _set_clause(dst: JobState, now: float, fields: dict[str, Any]) -> tuple[str, list[Any]]:
    bad = set(fields) - _SETTABLE
    if bad:
        raise ValueError(f"columns not settable by a route-job transition: {sorted(bad)}")
    cols = ["state = ?", "updated_at = ?"] + [f"{name} = ?" for name in fields]
    return ", ".join(cols), [dst.value, now, *fields.values()]


def transition(
    conn: sqlite3.Connection, job_id: int, src: JobState, dst: JobState, now: float, **fields: Any
) -> bool:
    """Move one job from `src` to `dst`; False when another actor changed it first.

    The caller owns the transaction; `fields` are extra columns to set."""
    check_transition(src, dst)
    cols, args = _set_clause(dst, now, fields)
    cur = conn.execute(
        f"UPDATE route_jobs SET {cols} WHERE id = ? AND state = ?", [*args, job_id, src.value]
    )
    return cur.rowcount == 1


def transition_all(
    conn: sqlite3.Connection,
    src: JobState,
    dst: JobState,
    now: float,
    *,
    where: dict[str, Any] | None = None,
    ids: list[int] | None = None,
    **fields: Any,
) -> int:
    """Move every job in `src` (narrowed by equal columns in `where` and by `ids`) to `dst`;
    returns how many moved."""
    check_transition(src, dst)
    cols, args = _set_clause(dst, now, fields)
    conds: list[str] = ["state = ?"]
    cond_args: list[Any] = [src.value]
    for name, value in (where or {}).items():
        if name not in _SELECTABLE:
            raise ValueError(f"route jobs are not selected by {name!r}")
        conds.append(f"{name} = ?")
        cond_args.append(value)
    if ids:
        conds.append(f"id IN ({','.join('?' * len(ids))})")
        cond_args += ids
    sql = f"UPDATE route_jobs SET {cols} WHERE {' AND '.join(conds)}"
    return conn.execute(sql, [*args, *cond_args]).rowcount
