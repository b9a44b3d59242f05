"""The routing queue and the forwarder's retry, dead-letter and concurrency logic.

The sender here is our own seam (edge.forwarder.Sender), played by a small recording peer;
test_forward_dcmtk.py runs the same loop against DCMTK storescp destinations.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge.forwarder import Forwarder, SendResult
from edge.routequeue import Job, claim, queue_depth, recover, retry
from shared.registry import Node
from shared.rows import Origin
from shared.synthetic import StudySpec, write_study
from tests.support.net import wait_for
from tests.support.routing import edge_parts, jobs, routing_config, running_forwarder

NODES = [
    {"ae_title": "DEST1", "host": "127.0.0.1", "port": 1104},
    {"ae_title": "DEST2", "host": "127.0.0.1", "port": 1105},
]


def route(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "all",
        "destinations": ["DEST1"],
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
    }
    base.update(kw)
    return base


class RecordingPeer:
    """Receives batches; fails the first `down_calls` calls as a destination that is down."""

    def __init__(self, down_calls: int = 0, permanent_uids: frozenset[str] = frozenset()) -> None:
        self.down_calls = down_calls
        self.permanent_uids = permanent_uids
        self.calls = 0
        self.received: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.hold: threading.Event | None = None

    def __call__(self, node: Node, batch: list[Job]) -> dict[int, SendResult]:
        with self.lock:
            self.calls += 1
            call = self.calls
            n = self.in_flight[node.ae_title] = self.in_flight.get(node.ae_title, 0) + 1
            self.max_in_flight[node.ae_title] = max(self.max_in_flight.get(node.ae_title, 0), n)
        try:
            if self.hold is not None:
                self.hold.wait(5)
            if call <= self.down_calls:
                raise ConnectionRefusedError("association refused")
            out = {}
            for job in batch:
                if job.sop_instance_uid in self.permanent_uids:
                    out[job.id] = SendResult(False, "status 0xA900", permanent=True)
                    continue
                with self.lock:
                    self.received.append((node.ae_title, job.sop_instance_uid))
                out[job.id] = SendResult(True)
            return out
        finally:
            with self.lock:
                self.in_flight[node.ae_title] -= 1


def ingest_study(parts: Any, tmp_path: Path, n: int = 3, **spec: Any) -> list[Path]:
    files = write_study(StudySpec(instances_per_series=n, **spec), tmp_path / f"in{time.time_ns()}")
    for f in files:
        parts.ingestor.ingest_path(f, Origin("import", calling_ae="CT01"))
    return files


def states(db: Any) -> dict[str, int]:
    return {k: v for k, v in queue_depth(db.reader()).items() if v}


def test_ingest_enqueues_matching_routes_once(tmp_path: Path) -> None:
    cfg = routing_config(
        tmp_path,
        [route(destinations=["DEST1", "DEST2"]), route(name="mr", modality="MR")],
        NODES,
    )
    with edge_parts(cfg) as parts:
        files = ingest_study(parts, tmp_path)
        for f in files:  # a duplicate ingest queues nothing more
            parts.ingestor.ingest_path(f, Origin("import"))
        rows = jobs(parts.db)
        assert len(rows) == 6
        assert {(r["route"], r["destination"]) for r in rows} == {
            ("all", "DEST1"),
            ("all", "DEST2"),
        }
        assert {r["state"] for r in rows} == {"pending"}


def test_destination_down_then_back_nothing_lost_nothing_twice(tmp_path: Path) -> None:
    cfg = routing_config(tmp_path, [route(max_attempts=50)], NODES)
    peer = RecordingPeer(down_calls=3)
    with edge_parts(cfg) as parts:
        ingest_study(parts, tmp_path, n=5)
        with running_forwarder(parts, peer, poll_interval_s=0.01):
            wait_for(lambda: states(parts.db) == {"sent": 5}, 10, "all sent")
        assert len(peer.received) == 5 and len(set(peer.received)) == 5
        assert {r["attempts"] for r in jobs(parts.db)} == {3}


def test_dead_letter_after_max_attempts_with_reason_then_retry(tmp_path: Path) -> None:
    cfg = routing_config(tmp_path, [route(max_attempts=2)], NODES)
    peer = RecordingPeer(down_calls=2)
    with edge_parts(cfg) as parts:
        ingest_study(parts, tmp_path, n=2)
        with running_forwarder(parts, peer, poll_interval_s=0.01) as fwd:
            wait_for(lambda: states(parts.db) == {"dead": 2}, 10, "dead letter")
            reasons = {r["last_error"] for r in jobs(parts.db)}
            assert reasons == {
                "gave up after 2 attempts: ConnectionRefusedError: association refused"
            }
            with parts.db.write() as conn:
                assert retry(conn, destination="DEST1") == 2
            fwd.wake()
            wait_for(lambda: states(parts.db) == {"sent": 2}, 10, "sent after retry")
        assert len(peer.received) == 2


def test_permanent_error_goes_to_dead_letter_at_once(tmp_path: Path) -> None:
    cfg = routing_config(tmp_path, [route()], NODES)
    with edge_parts(cfg) as parts:
        files = ingest_study(parts, tmp_path, n=2)
        bad = _uid(files[0])
        with running_forwarder(parts, RecordingPeer(permanent_uids=frozenset({bad}))):
            wait_for(lambda: states(parts.db) == {"sent": 1, "dead": 1}, 10, "one dead")
        dead = [r for r in jobs(parts.db) if r["state"] == "dead"]
        assert dead[0]["sop_instance_uid"] == bad
        assert dead[0]["attempts"] == 1 and dead[0]["last_error"] == "status 0xA900"


def test_per_destination_concurrency_is_respected(tmp_path: Path) -> None:
    cfg = routing_config(tmp_path, [route(concurrency=2, destinations=["DEST1", "DEST2"])], NODES)
    peer = RecordingPeer()
    peer.hold = threading.Event()
    with edge_parts(cfg) as parts:
        for _ in range(4):  # four studies: four batches per destination
            ingest_study(parts, tmp_path, n=1)
        with running_forwarder(parts, peer, poll_interval_s=0.01) as fwd:
            try:
                wait_for(
                    lambda: sum(peer.in_flight.values()) == 4, 10, "two batches per destination"
                )
                assert fwd.dispatch() == 0  # no free slot
                peer.hold.set()
                wait_for(lambda: states(parts.db) == {"sent": 8}, 10, "all sent")
            finally:
                peer.hold.set()  # before stop(), which joins the held sends
        assert peer.max_in_flight == {"DEST1": 2, "DEST2": 2}


def test_stable_after_s_waits_for_a_quiet_study(tmp_path: Path) -> None:
    cfg = routing_config(tmp_path, [route(stable_after_s=30)], NODES)
    with edge_parts(cfg) as parts:
        ingest_study(parts, tmp_path, n=3)
        with parts.db.write() as conn:
            assert claim(conn, "DEST1", time.time(), 10) == []
            conn.execute("UPDATE studies SET updated_at = updated_at - 31")
            claimed = claim(conn, "DEST1", time.time(), 10)
        assert len(claimed) == 3  # the whole study in one batch


def test_restart_requeues_jobs_left_sending(tmp_path: Path) -> None:
    cfg = routing_config(tmp_path, [route()], NODES)
    with edge_parts(cfg) as parts:
        ingest_study(parts, tmp_path, n=2)
        with parts.db.write() as conn:
            assert len(claim(conn, "DEST1", time.time(), 10)) == 2
        assert states(parts.db) == {"sending": 2}
        with parts.db.write() as conn:
            assert recover(conn) == 2
        assert states(parts.db) == {"pending": 2}


def test_unregistered_destination_retries_with_reason(tmp_path: Path) -> None:
    cfg = routing_config(tmp_path, [route(max_attempts=1)], NODES)
    with edge_parts(cfg) as parts:
        ingest_study(parts, tmp_path, n=1)
        with parts.db.write() as conn:
            conn.execute("DELETE FROM nodes WHERE ae_title = 'DEST1'")
        with running_forwarder(parts, RecordingPeer()):
            wait_for(lambda: states(parts.db) == {"dead": 1}, 10, "dead")
        assert "DEST1 is not a registered node" in jobs(parts.db)[0]["last_error"]


def _uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Any:
    before = {t.name for t in threading.enumerate()}
    yield
    left = [
        t for t in threading.enumerate() if t.name.startswith("forward") and t.name not in before
    ]
    assert not [t for t in left if t.is_alive()], left


def test_stop_joins_every_forwarder_thread_even_past_its_timeout(tmp_path: Path) -> None:
    """No forwarder thread may outlive stop(): one left sending logged and wrote after its
    caller had closed the index and the log stream."""
    cfg = routing_config(tmp_path, [route()], NODES)
    peer = RecordingPeer()
    peer.hold = threading.Event()
    with edge_parts(cfg) as parts:
        ingest_study(parts, tmp_path, n=1)
        fwd = Forwarder(parts.db, cfg, peer, poll_interval_s=0.01)
        fwd.start()
        try:
            wait_for(lambda: peer.in_flight.get("DEST1") == 1, 10, "a send in flight")
            stopper = threading.Thread(target=fwd.stop, kwargs={"timeout_s": 0.01})
            stopper.start()
            stopper.join(0.3)
            assert stopper.is_alive()  # still waiting for the send, past its timeout
        finally:
            peer.hold.set()
        stopper.join(10)
        assert not stopper.is_alive()
        alive = [t.name for t in threading.enumerate() if t.name.startswith("forward")]
        assert alive == []
        assert states(parts.db) == {"sent": 1}
