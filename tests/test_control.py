"""Control requests (shared/control.py): the keys, and the plumbing restores and deletions share,
on a real file:// bucket."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import control
from shared.deletion_request import DeletionRequest, DeletionStatus
from shared.errors import BadRequest, NotFound
from shared.keys import (
    DELETIONS,
    RESTORES,
    control_key,
    control_request_id,
    control_status_key,
    deletion_key,
    restore_status_key,
)
from shared.restore import RestoreRequest
from shared.store import ObjectStore, open_store


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path / 'bucket'}")


def test_keys_of_both_kinds_and_their_parse() -> None:
    assert control_key("north", RESTORES, "r1") == "control/north/restores/r1.json"
    assert deletion_key("north", "d1") == "control/north/deletions/d1.json"
    assert restore_status_key("north", "r1") == "control/north/restores/r1.status.json"
    assert control_request_id(control_key("north", DELETIONS, "d1")) == "d1"
    assert control_request_id(control_status_key("north", DELETIONS, "d1")) is None
    assert control_request_id("control/north/deletions/notes.txt") is None
    with pytest.raises(BadRequest, match="bad deletion id"):
        control_key("north", DELETIONS, "d1\n")
    with pytest.raises(BadRequest, match="bad restore id"):
        control_key("north", RESTORES, "../x")
    with pytest.raises(ValueError, match="unknown control request kind"):
        control_key("north", "reboots", "x1")


def test_ids_sort_by_time_and_are_unique() -> None:
    a, b = control.new_request_id(1_000_000.0), control.new_request_id(1_000_001.0)
    assert a < b and a[:16] == "19700112T134640Z"
    assert control.new_request_id(1.0) != control.new_request_id(1.0)


def test_status_read_pending_then_answered_and_unknown(store: ObjectStore) -> None:
    req = RestoreRequest(control.new_request_id(), "north", 1.0, "admin", None)
    with pytest.raises(NotFound, match=f"no restore {req.id} for site north"):
        control.read_status(store, RESTORES, "north", req.id)
    control.put_request(store, RESTORES, "north", req.id, req.to_bytes())
    assert control.read_status(store, RESTORES, "north", req.id) is None
    control.put_status(store, RESTORES, "north", req.id, b'{"v": 1}')
    control.put_status(store, RESTORES, "north", req.id, b'{"v": 2}')  # progress overwrites
    assert control.read_status(store, RESTORES, "north", req.id) == b'{"v": 2}'
    assert control.request_ids(store, RESTORES, "north") == [req.id]
    assert control.request_ids(store, DELETIONS, "north") == []


def test_the_agents_poll_in_order_skips_the_unreadable_and_says_which_are_answered(
    store: ObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    reqs = [
        DeletionRequest(id=control.new_request_id(float(t)), site="north", study_uid="1.2.3")
        for t in (3, 1, 2)
    ]
    for r in reqs:
        control.put_request(store, DELETIONS, "north", r.id, r.to_bytes())
    store.put(control_key("north", DELETIONS, "0-broken"), b"not json")
    done = DeletionStatus(id=reqs[1].id, site="north", phase="done", updated_at=4.0)
    control.put_status(store, DELETIONS, "north", reqs[1].id, done.to_bytes())

    got = list(control.requests(store, DELETIONS, "north", DeletionRequest.from_bytes))

    assert [(r.id, answered) for r, answered in got] == [
        (reqs[1].id, True),
        (reqs[2].id, False),
        (reqs[0].id, False),
    ]
    assert "unreadable deletion request key=control/north/deletions/0-broken.json" in caplog.text
    assert [
        DeletionStatus.from_bytes(d).phase for d in control.statuses(store, DELETIONS, "north")
    ] == ["done"]
