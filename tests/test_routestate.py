"""The route-job table and the conditional UPDATE through which every route-job state changes
(defect 11 of issue 12: five hand-written UPDATEs, and a mark_failed that ignored its row count)."""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import pytest

from edge.routequeue import Job, claim, mark_failed, mark_sent, recover, retry
from edge.routestate import (
    RECOVERY,
    TRANSITIONS,
    IllegalTransition,
    JobState,
    check_transition,
    transition,
    transition_all,
)
from shared.index import Database, connect, transaction

ROOT = Path(__file__).resolve().parents[1]
J = JobState
ALLOWED = {
    (J.PENDING, J.SENDING),
    (J.SENDING, J.SENT),
    (J.SENDING, J.PENDING),
    (J.SENDING, J.DEAD),
    (J.DEAD, J.PENDING),
}


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(JobState, JobState)))
def test_route_job_transition_table(src: JobState, dst: JobState) -> None:
    if (src, dst) in ALLOWED:
        check_transition(src, dst)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(src, dst)


def test_table_covers_every_state_sent_is_final_and_recovery_is_legal() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert TRANSITIONS[J.SENT] == frozenset()
    assert RECOVERY == {J.SENDING: J.PENDING}  # at least once: a crash mid-send sends again
    for stuck, back in RECOVERY.items():
        check_transition(stuck, back)


def _jobs(db: Database, n: int = 1, destination: str = "DEST1") -> list[int]:
    now = time.time()
    ids = []
    with db.write() as conn:
        for i in range(n):
            cur = conn.execute(
                "INSERT INTO route_jobs(route, destination, study_uid, sop_instance_uid, "
                "stable_after_s, max_attempts, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                ("all", destination, "1.2.3", f"1.2.3.4.{i}.{destination}", 0, 3, now, now),
            )
            ids.append(int(cur.lastrowid or 0))
    return ids


def _state(db: Database, job_id: int) -> str:
    return db.reader().execute("SELECT state FROM route_jobs WHERE id=?", (job_id,)).fetchone()[0]


def test_claim_is_compare_and_swap_across_connections(tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite")
    try:
        (job_id,) = _jobs(db)
        other = connect(tmp_path / "index.sqlite")  # a second process's connection
        with db.write() as a:
            assert transition(a, job_id, J.PENDING, J.SENDING, time.time())
        with transaction(other) as b:  # read "pending" earlier, claims too: it loses
            assert not transition(b, job_id, J.PENDING, J.SENDING, time.time())
        assert _state(db, job_id) == "sending"
        other.close()
    finally:
        db.close()


def test_mark_failed_reports_a_job_that_is_no_longer_ours(tmp_path: Path) -> None:
    """A second serve's start-up requeued our `sending` job: recording our failure must not
    claim a state change that did not happen (it returned PENDING/DEAD regardless)."""
    db = Database(tmp_path / "index.sqlite")
    try:
        (job_id,) = _jobs(db)
        with db.write() as conn:
            (job,) = claim(conn, "DEST1", time.time(), 10)
        with db.write() as conn:
            assert recover(conn) == 1  # the other process
        with db.write() as conn:
            assert mark_failed(conn, job, "refused", time.time(), 5.0, permanent=True) is None
            assert not mark_sent(conn, job.id, time.time())
        row = db.reader().execute("SELECT * FROM route_jobs WHERE id=?", (job_id,)).fetchone()
        assert (row["state"], row["attempts"], row["last_error"]) == ("pending", 0, "")
        with db.write() as conn:
            (job,) = claim(conn, "DEST1", time.time(), 10)
            assert mark_failed(conn, job, "refused", time.time(), 5.0) is J.PENDING
        with db.write() as conn:
            stale = Job(job.id, "all", "DEST1", "1.2.3", job.sop_instance_uid, 0, 3, "", "")
            assert mark_failed(conn, stale, "again", time.time(), 5.0) is None  # not sending
        assert db.reader().execute("SELECT attempts FROM route_jobs").fetchone()[0] == 1
    finally:
        db.close()


def test_set_transitions_select_by_column_and_refuse_the_rest(tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite")
    try:
        a = _jobs(db, 2, "DEST1")
        b = _jobs(db, 1, "DEST2")
        now = time.time()
        with db.write() as conn:
            assert transition_all(conn, J.PENDING, J.SENDING, now) == 3
            assert transition_all(conn, J.SENDING, J.DEAD, now, where={"destination": "DEST2"}) == 1
            assert transition_all(conn, J.SENDING, J.DEAD, now, ids=[a[0]]) == 1
            assert retry(conn, destination="DEST1") == 1  # only DEST1's dead job
            with pytest.raises(IllegalTransition):
                transition_all(conn, J.SENT, J.PENDING, now)
            with pytest.raises(ValueError, match="not settable"):
                transition(conn, a[1], J.SENDING, J.SENT, now, route="x")
            with pytest.raises(ValueError, match="not selected"):
                transition_all(conn, J.DEAD, J.PENDING, now, where={"last_error": ""})
        states = [_state(db, i) for i in (*a, *b)]
        assert states == ["pending", "sending", "dead"]
    finally:
        db.close()


def test_every_state_write_goes_through_its_transition_function() -> None:
    """No UPDATE of route_jobs outside edge/routestate.py, no UPDATE of an instance's state
    outside shared/lifecycle.py (string literals and all)."""
    owners = {
        re.compile(r"UPDATE\s+route_jobs\b", re.I): "edge/routestate.py",
        re.compile(r"UPDATE\s+instances\s+SET[^\"']*?\bstate\s*=", re.I): "shared/lifecycle.py",
    }
    offenders = []
    for package in ("edge", "shared", "sync", "cloud_api"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text()
            for pattern, owner in owners.items():
                if rel != owner and pattern.search(text):
                    offenders.append(f"{rel}: {pattern.pattern}")
    assert offenders == []
