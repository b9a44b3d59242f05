"""The lifecycle table and the conditional UPDATE that lets only one actor claim a row."""

from __future__ import annotations

import itertools
import sqlite3
import time
from pathlib import Path

import pytest

from shared.dicom import Header
from shared.index import Database, connect, transaction
from shared.lifecycle import (
    CLOUD_VERIFIED_STATES,
    DELETABLE_STATES,
    HIDDEN_STATES,
    LOCAL_STATES,
    PURGE_RESUMED,
    RECOVERY,
    TRANSITIONS,
    IllegalTransition,
    State,
    check_transition,
    transition,
)
from shared.rows import Origin, index_instance

S = State
ALLOWED = {
    (S.CACHED, S.UPLOADING),
    (S.CACHED, S.CACHED),
    (S.CACHED, S.LOST),  # damaged in the cache before any upload
    (S.UPLOADING, S.SYNCED),
    (S.UPLOADING, S.CACHED),
    (S.UPLOADING, S.FAILED),
    (S.UPLOADING, S.CONFLICT),
    (S.UPLOADING, S.LOST),  # the uploader found the file damaged
    (S.SYNCED, S.EVICTING),
    (S.SYNCED, S.CACHED),
    (S.SYNCED, S.RECALLING),  # damaged file quarantined, verified cloud copy fetched again
    (S.EVICTING, S.EVICTED),
    (S.EVICTING, S.SYNCED),
    (S.EVICTED, S.RECALLING),
    (S.EVICTED, S.CACHED),
    (S.RECALLING, S.SYNCED),
    (S.RECALLING, S.EVICTED),
    (S.RECALLING, S.LOST),  # the store answers NotFound
    (S.FAILED, S.CACHED),
    (S.FAILED, S.LOST),
    (S.CONFLICT, S.CACHED),
    (S.CONFLICT, S.LOST),
    (S.LOST, S.CACHED),  # sent again
    (S.LOST, S.RECALLING),  # admin retry (`hpacs-sync retry-lost`)
    # deletion: from every resting state
    (S.CACHED, S.DELETED),
    (S.SYNCED, S.DELETED),
    (S.EVICTED, S.DELETED),
    (S.FAILED, S.DELETED),
    (S.CONFLICT, S.DELETED),
    (S.LOST, S.DELETED),
    # undelete: back where it was (a synced row's file went at deletion: evicted)
    (S.DELETED, S.CACHED),
    (S.DELETED, S.EVICTED),
    (S.DELETED, S.FAILED),
    (S.DELETED, S.CONFLICT),
    (S.DELETED, S.LOST),
    # purge: claimed after the grace, finished, never rolled back
    (S.DELETED, S.PURGING),
    (S.PURGING, S.PURGED),
    (S.PURGED, S.CACHED),  # sent again after the purge: a new instance
}


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(State, State)))
def test_transition_table(src: State, dst: State) -> None:
    if (src, dst) in ALLOWED:
        check_transition(src, dst)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(src, dst)


def test_table_covers_every_state_and_forbids_unverified_eviction() -> None:
    assert set(TRANSITIONS) == set(State)
    # invariant 2: only a synced (verified) instance can start evicting
    assert [s for s in State if S.EVICTING in TRANSITIONS[s]] == [S.SYNCED]
    assert S.EVICTED not in LOCAL_STATES and S.EVICTING not in LOCAL_STATES
    # a lost instance has no file, and only a new copy (ingest), a recall or a deletion
    # leaves the state
    assert S.LOST not in LOCAL_STATES
    assert TRANSITIONS[S.LOST] == {S.CACHED, S.RECALLING, S.DELETED}
    assert S.LOST not in RECOVERY
    for stuck, back in RECOVERY.items():
        check_transition(stuck, back)


def test_deletion_states_hide_and_never_lose_a_promise() -> None:
    # a row mid-work (upload, eviction, recall, purge) is never deleted under its worker
    assert {S.CACHED, S.SYNCED, S.EVICTED, S.FAILED, S.CONFLICT, S.LOST} == DELETABLE_STATES
    assert not DELETABLE_STATES & (set(RECOVERY) | HIDDEN_STATES)
    # hidden states have no servable file and vouch for no cloud copy: nothing reads them
    assert not HIDDEN_STATES & (LOCAL_STATES | CLOUD_VERIFIED_STATES)
    # every hidden state is reached only through `deleted`
    for s in State:
        if s not in HIDDEN_STATES:
            assert TRANSITIONS[s] & HIDDEN_STATES <= {S.DELETED}
    # a purge, once claimed, only finishes (its objects may already be gone), also after a
    # crash; only a new ingest leaves `purged`
    assert TRANSITIONS[S.PURGING] == {S.PURGED} and S.PURGING not in RECOVERY
    for stuck, done in PURGE_RESUMED.items():
        check_transition(stuck, done)
    assert TRANSITIONS[S.PURGED] == {S.CACHED}
    # an undelete can reach every state a row was deleted from (synced comes back evicted)
    for s in DELETABLE_STATES - {S.SYNCED}:
        check_transition(S.DELETED, s)
    with pytest.raises(IllegalTransition):
        check_transition(S.DELETED, S.SYNCED)


def _row(db: Database, uid: str = "1.2.3.4") -> int:
    h = Header(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_uid="1.2.3",
        series_uid="1.2.3.1",
        transfer_syntax="1.2.840.10008.1.2.1",
    )
    with db.write() as conn:
        return index_instance(conn, h, "ab/cd/x.dcm", 10, "00000000", Origin("test"), time.time())


def _state(db: Database, row_id: int) -> str:
    return db.reader().execute("SELECT state FROM instances WHERE id=?", (row_id,)).fetchone()[0]


def test_transition_is_compare_and_swap_across_connections(tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite")
    try:
        row_id = _row(db)
        other = connect(tmp_path / "index.sqlite")  # a second process's connection
        with db.write() as a:
            assert transition(a, row_id, S.CACHED, S.UPLOADING, attempts=1)
        # the other actor read "cached" earlier and now tries the same claim: it loses
        with transaction(other) as b:
            assert not transition(b, row_id, S.CACHED, S.UPLOADING, attempts=1)
        assert _state(db, row_id) == "uploading"
        with transaction(other) as b:
            assert transition(b, row_id, S.UPLOADING, S.SYNCED, object_key="instances/x")
        with db.write() as a:
            assert not transition(a, row_id, S.UPLOADING, S.CACHED)
        row = db.reader().execute("SELECT * FROM instances WHERE id=?", (row_id,)).fetchone()
        assert (row["state"], row["attempts"], row["object_key"]) == ("synced", 1, "instances/x")
        other.close()
    finally:
        db.close()


def test_concurrent_writer_waits_instead_of_failing(tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite")
    try:
        row_id = _row(db)
        other = connect(tmp_path / "index.sqlite")
        other.execute("PRAGMA busy_timeout=50")
        with db.write() as a:
            assert transition(a, row_id, S.CACHED, S.UPLOADING)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.close()
    finally:
        db.close()


def test_transition_refuses_illegal_moves_and_unknown_columns(tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite")
    try:
        row_id = _row(db)
        with db.write() as conn:
            with pytest.raises(IllegalTransition):
                transition(conn, row_id, S.CACHED, S.EVICTED)
            with pytest.raises(ValueError, match="not settable"):
                transition(conn, row_id, S.CACHED, S.UPLOADING, sop_instance_uid="9")
        assert _state(db, row_id) == "cached"
    finally:
        db.close()
