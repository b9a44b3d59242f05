"""The persistent queue of Storage Commitment reports (table `commitment_reports`).

Every verified N-ACTION becomes a row before any delivery is tried, so a report is never only
in memory or only a log line: delivered on the requester's association, or on a call-back
association to its registered address, it is marked `sent`; a call-back that fails goes back
to `pending` with capped exponential backoff, and after MAX_ATTEMPTS it rests in `failed`,
listed on the console (`/api/commitments`) until an admin requeues it. One state machine,
one transition table, one conditional UPDATE per change (like shared/lifecycle.py), so two
acceptor processes never send the same report twice at once.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from shared.index import Database

log = logging.getLogger("hpacs.edge.commitment")

BACKOFF_INITIAL_S = 10.0
BACKOFF_MAX_S = 3600.0
MAX_ATTEMPTS = 30  # about a day of retries at the cap
POLL_S = 2.0


class ReportState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


TRANSITIONS: dict[ReportState, frozenset[ReportState]] = {
    ReportState.PENDING: frozenset({ReportState.SENDING, ReportState.SENT}),
    ReportState.SENDING: frozenset({ReportState.SENT, ReportState.PENDING, ReportState.FAILED}),
    ReportState.FAILED: frozenset({ReportState.PENDING}),
    ReportState.SENT: frozenset(),
}
# Where a row left mid-delivery by a crash goes at start-up.
RECOVERY = {ReportState.SENDING: ReportState.PENDING}

Verdicts = list[tuple[str, str, int]]  # (SOP class, SOP instance, failure reason or 0)


@dataclass(frozen=True)
class Report:
    id: int
    calling_ae: str
    transaction_uid: str
    verdicts: Verdicts
    attempts: int


def transition(
    conn: sqlite3.Connection, report_id: int, src: ReportState, dst: ReportState, **fields: object
) -> bool:
    """One conditional UPDATE; False when the row was not in `src` (someone else moved it)."""
    if dst not in TRANSITIONS[src]:
        raise ValueError(f"commitment report transition {src} -> {dst} is not allowed")
    sets = ", ".join(f"{k} = ?" for k in fields)
    sql = "UPDATE commitment_reports SET state = ?, updated_at = ?"
    sql += f", {sets}" if sets else ""
    cur = conn.execute(
        sql + " WHERE id = ? AND state = ?",
        [dst.value, time.time(), *fields.values(), report_id, src.value],
    )
    return cur.rowcount == 1


def backoff_s(attempts: int) -> float:
    base = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** max(0, attempts - 1))
    return base * random.uniform(0.8, 1.2)


class ReportQueue:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, calling_ae: str, transaction_uid: str, verdicts: Verdicts) -> int:
        now = time.time()
        with self.db.write() as conn:
            cur = conn.execute(
                "INSERT INTO commitment_reports(calling_ae, transaction_uid, verdicts, state, "
                "created_at, updated_at) VALUES (?,?,?,?,?,?)",
                (calling_ae, transaction_uid, json.dumps(verdicts), "pending", now, now),
            )
            return int(cur.lastrowid or 0)

    def claim(self, report_id: int) -> bool:
        with self.db.write() as conn:
            return transition(conn, report_id, ReportState.PENDING, ReportState.SENDING)

    def sent(self, report_id: int, src: ReportState = ReportState.SENDING) -> None:
        with self.db.write() as conn:
            transition(conn, report_id, src, ReportState.SENT, sent_at=time.time(), last_error="")

    def failed(self, report_id: int, attempts: int, error: str) -> ReportState:
        """Back to pending with backoff, or `failed` after MAX_ATTEMPTS."""
        dst = ReportState.FAILED if attempts >= MAX_ATTEMPTS else ReportState.PENDING
        with self.db.write() as conn:
            transition(
                conn,
                report_id,
                ReportState.SENDING,
                dst,
                attempts=attempts,
                next_attempt_at=time.time() + backoff_s(attempts),
                last_error=error[:500],
            )
        return dst

    def due(self, now: float, limit: int = 20) -> list[Report]:
        rows = (
            self.db.reader()
            .execute(
                "SELECT id, calling_ae, transaction_uid, verdicts, attempts FROM "
                "commitment_reports WHERE state = 'pending' AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at LIMIT ?",
                (now, limit),
            )
            .fetchall()
        )
        return [
            Report(
                r["id"],
                r["calling_ae"],
                r["transaction_uid"],
                [tuple(v) for v in json.loads(r["verdicts"])],  # type: ignore[misc]
                r["attempts"],
            )
            for r in rows
        ]

    def get(self, report_id: int) -> Report | None:
        r = (
            self.db.reader()
            .execute(
                "SELECT id, calling_ae, transaction_uid, verdicts, attempts FROM "
                "commitment_reports WHERE id = ?",
                (report_id,),
            )
            .fetchone()
        )
        if r is None:
            return None
        verdicts = [tuple(v) for v in json.loads(r["verdicts"])]
        return Report(r["id"], r["calling_ae"], r["transaction_uid"], verdicts, r["attempts"])  # type: ignore[arg-type]

    def recover(self) -> int:
        """Rows left `sending` by a crash go back to `pending` (called once at start-up)."""
        with self.db.write() as conn:
            cur = conn.execute(
                "UPDATE commitment_reports SET state = ?, updated_at = ? WHERE state = ?",
                (RECOVERY[ReportState.SENDING].value, time.time(), ReportState.SENDING.value),
            )
            return cur.rowcount

    def retry_failed(self) -> int:
        """Requeue every `failed` report now (console / admin action)."""
        with self.db.write() as conn:
            ids = [
                r[0] for r in conn.execute("SELECT id FROM commitment_reports WHERE state='failed'")
            ]
            n = 0
            for report_id in ids:
                n += transition(
                    conn, report_id, ReportState.FAILED, ReportState.PENDING, next_attempt_at=0
                )
            return n


def listing(db: Database, limit: int = 100) -> list[dict[str, object]]:
    """Reports not yet delivered, newest first (console read model; UIDs and AE titles only)."""
    rows = db.reader().execute(
        "SELECT id, calling_ae, transaction_uid, state, attempts, next_attempt_at, last_error, "
        "created_at FROM commitment_reports WHERE state != 'sent' ORDER BY created_at DESC "
        "LIMIT ?",
        (limit,),
    )
    return [dict(r) for r in rows]


class Retrier:
    """Delivers due reports on call-back associations, one at a time, in one thread."""

    def __init__(self, queue: ReportQueue, deliver: Callable[[Report], None]) -> None:
        self.queue = queue
        self.deliver = deliver
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        n = self.queue.recover()
        if n:
            log.info("commitment reports requeued after a restart count=%d", n)
        self._thread = threading.Thread(target=self._run, name="commit-retry", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for report in self.queue.due(time.time()):
                    if self._stop.is_set():
                        break
                    self.deliver(report)
            except Exception:  # the loop must outlive a bad moment of the index
                log.exception("commitment report retry failed")
            self._wake.wait(POLL_S)
            self._wake.clear()
