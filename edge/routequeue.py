"""The persistent routing queue: rows in `route_jobs`, every change a short conditional UPDATE.

States (edge/routestate.py, every change through its `transition`): pending -> sending ->
sent; a failure puts the job back to pending with a next attempt time, or into `dead` (the
dead letter) after `max_attempts` or a permanent error, with the reason in `last_error`.
`sending` left behind by a crash returns to pending at start-up (RECOVERY), so a forward
interrupted mid-way is sent again (at least once), never lost (invariant 6).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime

from edge.routestate import RECOVERY, JobState, transition, transition_all
from edge.routing import Rule, matching_rules
from shared.config import RouteConfig
from shared.dicom import Header


@dataclass(frozen=True)
class Job:
    id: int
    route: str
    destination: str
    study_uid: str
    sop_instance_uid: str
    attempts: int
    max_attempts: int
    path: str  # cache-relative; "" when the instance row is gone
    instance_state: str


def enqueue(
    conn: sqlite3.Connection,
    rules: list[Rule],
    header: Header,
    calling_ae: str,
    now: float,
    at: datetime | None = None,
) -> int:
    """Queue one job per matching rule and destination; a repeat of the same one is ignored."""
    n = 0
    for rule in matching_rules(rules, header, calling_ae, at or datetime.fromtimestamp(now)):
        for dest in rule.destinations:
            cur = conn.execute(
                "INSERT OR IGNORE INTO route_jobs(route, destination, study_uid, "
                "sop_instance_uid, stable_after_s, max_attempts, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (
                    rule.name,
                    dest,
                    header.study_uid,
                    header.sop_instance_uid,
                    rule.stable_after_s,
                    rule.max_attempts,
                    now,
                    now,
                ),
            )
            n += cur.rowcount
    return n


def enqueue_one_off(
    conn: sqlite3.Connection,
    route: str,
    destination: str,
    study_uid: str,
    sop_instance_uids: list[str],
    now: float,
    max_attempts: int = 10,
) -> int:
    """Queue `sop_instance_uids` once more to `destination` under `route` (a send asked for by
    hand, edge/studysend.py): an earlier delivery's `sent` row gives way (as pruning would),
    a `dead` one is requeued with a fresh budget, a pending or sending one stays as it is.
    Returns the jobs now waiting (new or requeued)."""
    n = 0
    for i in range(0, len(sop_instance_uids), 500):
        chunk = sop_instance_uids[i : i + 500]
        where = (
            f"route = ? AND destination = ? AND sop_instance_uid IN ({','.join('?' * len(chunk))})"
        )
        args = [route, destination, *chunk]
        conn.execute(
            f"DELETE FROM route_jobs WHERE {where} AND state = ?", [*args, JobState.SENT.value]
        )
        dead = conn.execute(
            f"SELECT id FROM route_jobs WHERE {where} AND state = ?", [*args, JobState.DEAD.value]
        )
        ids = [r[0] for r in dead]
        n += retry(conn, ids=ids, now=now) if ids else 0
        n += conn.executemany(
            "INSERT OR IGNORE INTO route_jobs(route, destination, study_uid, sop_instance_uid, "
            "max_attempts, created_at, updated_at) VALUES (?,?,?,?,?,?,?)",
            [(route, destination, study_uid, uid, max_attempts, now, now) for uid in chunk],
        ).rowcount
    return n


def recover(conn: sqlite3.Connection, now: float | None = None) -> int:
    """Jobs a crash left in `sending` go back to pending (sent again: at least once)."""
    at = time.time() if now is None else now
    return sum(transition_all(conn, src, dst, at) for src, dst in RECOVERY.items())


_DUE = (
    f"j.state = '{JobState.PENDING.value}' AND j.next_attempt_at <= :now AND "
    "(j.stable_after_s = 0 OR "
    "(SELECT s.updated_at FROM studies s WHERE s.study_uid = j.study_uid) + j.stable_after_s"
    " <= :now)"
)


def due_destinations(conn: sqlite3.Connection, now: float) -> list[str]:
    rows = conn.execute(f"SELECT DISTINCT destination FROM route_jobs j WHERE {_DUE}", {"now": now})
    return [r[0] for r in rows]


def claim(conn: sqlite3.Connection, destination: str, now: float, limit: int) -> list[Job]:
    """Claim due jobs of one destination, from the study of the oldest due job (one association
    then carries one study); the conditional UPDATE makes a claim exclusive."""
    first = conn.execute(
        f"SELECT j.study_uid FROM route_jobs j WHERE j.destination = :dest AND {_DUE} "
        "ORDER BY j.next_attempt_at, j.id LIMIT 1",
        {"dest": destination, "now": now},
    ).fetchone()
    if first is None:
        return []
    rows = conn.execute(
        "SELECT j.id, j.route, j.destination, j.study_uid, j.sop_instance_uid, j.attempts, "
        "j.max_attempts, coalesce(i.path, '') AS path, coalesce(i.state, '') AS istate "
        "FROM route_jobs j LEFT JOIN instances i ON i.sop_instance_uid = j.sop_instance_uid "
        f"WHERE j.destination = :dest AND j.study_uid = :study AND {_DUE} "
        "ORDER BY j.id LIMIT :limit",
        {"dest": destination, "study": first[0], "now": now, "limit": limit},
    ).fetchall()
    jobs = []
    for r in rows:
        if transition(conn, r["id"], JobState.PENDING, JobState.SENDING, now):
            jobs.append(
                Job(
                    r["id"],
                    r["route"],
                    r["destination"],
                    r["study_uid"],
                    r["sop_instance_uid"],
                    r["attempts"],
                    r["max_attempts"],
                    r["path"],
                    r["istate"],
                )
            )
    return jobs


def mark_sent(conn: sqlite3.Connection, job_id: int, now: float) -> bool:
    """False when the job was no longer ours (`sending`): nothing changed."""
    return transition(
        conn, job_id, JobState.SENDING, JobState.SENT, now, sent_at=now, last_error=""
    )


def mark_failed(
    conn: sqlite3.Connection,
    job: Job,
    error: str,
    now: float,
    retry_in_s: float,
    permanent: bool = False,
) -> JobState | None:
    """Count the attempt; dead-letter after max_attempts or a permanent error, else back off.

    Returns the job's new state, or None when the job was no longer ours (`sending`) and
    nothing changed."""
    attempts = job.attempts + 1
    dead = permanent or attempts >= job.max_attempts
    state = JobState.DEAD if dead else JobState.PENDING
    reason = error if not dead or permanent else f"gave up after {attempts} attempts: {error}"
    moved = transition(
        conn,
        job.id,
        JobState.SENDING,
        state,
        now,
        attempts=attempts,
        next_attempt_at=0 if dead else now + retry_in_s,
        last_error=reason[:500],
    )
    return state if moved else None


def retry(
    conn: sqlite3.Connection,
    *,
    ids: list[int] | None = None,
    route: str = "",
    destination: str = "",
    now: float | None = None,
) -> int:
    """Requeue dead jobs (all, some ids, one route or one destination) with a fresh budget."""
    where = {k: v for k, v in (("route", route), ("destination", destination)) if v}
    return transition_all(
        conn,
        JobState.DEAD,
        JobState.PENDING,
        time.time() if now is None else now,
        where=where,
        ids=ids,
        attempts=0,
        next_attempt_at=0,
    )


def summary(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT route, destination, state, count(*) AS n, min(created_at) AS oldest "
        "FROM route_jobs GROUP BY route, destination, state ORDER BY route, destination, state"
    ).fetchall()


def dead_jobs(conn: sqlite3.Connection, limit: int = 50) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT id, route, destination, study_uid, sop_instance_uid, attempts, last_error, "
        "updated_at FROM route_jobs WHERE state = ? ORDER BY updated_at DESC LIMIT ?",
        (JobState.DEAD.value, limit),
    ).fetchall()


def queue_depth(conn: sqlite3.Connection) -> dict[str, int]:
    """Jobs by state, for metrics and the console."""
    rows = conn.execute("SELECT state, count(*) FROM route_jobs GROUP BY state")
    depth = {s.value: 0 for s in JobState}
    depth.update({r[0]: int(r[1]) for r in rows})
    return depth


def prune_sent(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute(
        "DELETE FROM route_jobs WHERE state = ? AND sent_at < ?", (JobState.SENT.value, before)
    ).rowcount


def routes_report(routes: list[RouteConfig], conn: sqlite3.Connection) -> str:
    """`hpacs-edge routes list`: the rules, queue counts per route and destination, dead letter."""
    keys = "calling_ae modality sop_class_uid body_part study_description series_description"
    keys += " schedule"
    lines = [f"{'ROUTE':16} {'DESTINATIONS':24} {'STABLE_S':>8} {'MAX':>4} MATCH"]
    for r in routes:
        match = " ".join(f"{k}={getattr(r, k)}" for k in keys.split() if getattr(r, k))
        lines.append(
            f"{r.name:16} {','.join(r.destinations):24} {r.stable_after_s:>8g} "
            f"{r.max_attempts:>4} {match or '(everything)'}"
        )
    lines += ["", f"{'ROUTE':16} {'DESTINATION':16} {'STATE':8} {'COUNT':>7}"]
    for row in summary(conn):
        lines.append(f"{row['route']:16} {row['destination']:16} {row['state']:8} {row['n']:>7}")
    dead = dead_jobs(conn)
    if dead:
        lines += ["", f"{'ID':>7} {'ROUTE':16} {'DESTINATION':16} {'ATTEMPTS':>8} REASON"]
        for d in dead:
            lines.append(
                f"{d['id']:>7} {d['route']:16} {d['destination']:16} {d['attempts']:>8} "
                f"{d['last_error']}"
            )
    return "\n".join(lines)
