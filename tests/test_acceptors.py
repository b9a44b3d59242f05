"""edge.acceptors > 1: child processes on one port, limits across them, death with the parent."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge.access import RJ_LOCAL_LIMIT_EXCEEDED
from edge.slots import AssocSlots
from shared.errors import SUCCESS
from shared.index import Database
from tests.support.dcmtk import require_dcmtk, run
from tests.support.edge import association, edge_config
from tests.support.edgeproc import PipedEdge, piped_edge
from tests.support.net import port_open, wait_for

ALL = ["echo", "store", "find", "move", "get", "commit"]
NODES = [
    {"ae_title": ae, "host": "127.0.0.1", "port": 104, "permissions": ALL, "max_associations": n}
    for ae, n in [("CT01", 0), ("SECOND", 0), ("ANYWHERE", 0), ("ONEONLY", 1), ("STORESCU", 0)]
]


class Serving(PipedEdge):
    def child_pids(self) -> list[int]:
        m = re.search(r"acceptors ready count=\d+ pids=\[([\d, ]+)\]", self.text())
        assert m, self.text()
        return [int(p) for p in m.group(1).split(",")]


@contextmanager
def serving(tmp_path: Path, acceptors: int = 2, **edge: Any) -> Iterator[Serving]:
    data = edge_config(tmp_path, nodes=NODES, acceptors=acceptors, **edge)
    with piped_edge(tmp_path, data, Serving) as s:
        yield s


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie not yet reaped by its new parent is dead for our purpose
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" not in status.read_text()
    except FileNotFoundError:
        return False


def _hold_slots(path: str, size: int, aes: list[str], conn: Any) -> None:
    slots = AssocSlots(path, size)
    held = []
    with slots.locked():
        for ae in aes:
            held.append(slots.take(ae))
    conn.send("held")
    conn.recv()  # hold until told (or killed)


def test_slots_are_shared_across_processes_and_freed_by_death(tmp_path: Path) -> None:
    import multiprocessing

    path = str(tmp_path / "associations.slots")
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    p = ctx.Process(target=_hold_slots, args=(path, 4, ["CT01", "CT01", "MR01"], child_end))
    p.start()
    try:
        assert parent_end.recv() == "held"
        slots = AssocSlots(path, 4)
        with slots.locked():
            assert slots.counts("CT01") == (3, 2)
            mine = slots.take("MR01")
            assert mine is not None
            assert slots.counts("MR01") == (4, 2)
            assert slots.take("XA01") is None  # full
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        with slots.locked():
            assert slots.counts("CT01") == (1, 0)  # the kernel dropped the dead process's locks
        mine.release()
        assert slots.active() == 0
        slots.close()
    finally:
        if p.is_alive():
            p.kill()
            p.join()


def test_limits_hold_across_acceptor_processes(tmp_path: Path) -> None:
    with serving(tmp_path, acceptors=2, max_associations=3) as s:
        assert len(s.child_pids()) == 2
        with association(s.port, "ONEONLY") as first:
            assert first.is_established
            for _ in range(4):  # whichever child takes the connection, the node's limit holds
                with association(s.port, "ONEONLY") as again:
                    assert again.rejection == RJ_LOCAL_LIMIT_EXCEEDED
            with association(s.port, "CT01") as a, association(s.port, "SECOND") as b:
                assert a.is_established and b.is_established
                for _ in range(4):
                    with association(s.port, "ANYWHERE") as over:
                        assert over.rejection == RJ_LOCAL_LIMIT_EXCEEDED
                assert int(a.send_c_echo().Status) == SUCCESS
        assert "global association limit 3" in s.text()
        assert "node association limit 1" in s.text()
        slots = AssocSlots(s.data_dir / "associations.slots", 3)
        wait_for(lambda: slots.active() == 0, what="slots released")
        slots.close()
        with association(s.port, "ONEONLY") as later:
            assert later.is_established


def test_stores_through_several_acceptors_land_in_one_index(tmp_path: Path) -> None:
    require_dcmtk()
    from shared.synthetic import StudySpec, iter_study

    src = tmp_path / "in"
    src.mkdir()
    uids = set()
    for i, ds in enumerate(iter_study(StudySpec(series_count=1, instances_per_series=6))):
        ds.save_as(src / f"{i}.dcm", enforce_file_format=True)
        uids.add(str(ds.SOPInstanceUID))
    with serving(tmp_path, acceptors=2) as s:
        files = sorted(str(p) for p in src.iterdir())
        procs = [
            subprocess.Popen(
                ["storescu", "-aec", "HPACS", "127.0.0.1", str(s.port), *files[k::3]],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(3)
        ]
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        echo = run("echoscu", "-aet", "STORESCU", "-aec", "HPACS", "127.0.0.1", str(s.port))
        assert echo.returncode == 0, echo.stderr
        pids = s.child_pids()
        s.proc.send_signal(signal.SIGTERM)  # stops the children too, cleanly
        assert s.proc.wait(30) == 0, s.text()
        wait_for(lambda: not any(_alive(p) for p in pids), 20, "acceptors gone")
    db = Database(s.data_dir / "index.sqlite")
    try:
        got = {r[0] for r in db.reader().execute("SELECT sop_instance_uid FROM instances")}
    finally:
        db.close()
    assert got == uids


def test_kill_9_of_the_parent_leaves_no_acceptor_serving(tmp_path: Path) -> None:
    with serving(tmp_path, acceptors=2) as s:
        pids = s.child_pids()
        assert all(_alive(p) for p in pids)
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(30)
        wait_for(lambda: not any(_alive(p) for p in pids), 20, "acceptors gone")
        assert not port_open(s.port)


def test_a_burst_of_sigterms_stops_an_acceptor(tmp_path: Path) -> None:
    """The kernel sends an orphaned acceptor one SIGTERM per exiting thread of its killed
    parent (PR_SET_PDEATHSIG is re-sent as the child is reparented to each sibling thread).
    A handler that called Event.set() deadlocked on the Event's lock when signals nested, and
    the orphan kept listening (found with gdb after a kill -9 under load)."""
    with serving(tmp_path, acceptors=2) as s:
        pids = s.child_pids()
        # spread over a second or two, so that some land while a handler runs
        for _ in range(4000):
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            time.sleep(0.0005)  # the spacing of the injected signals, not a synchronisation
        wait_for(lambda: not any(_alive(p) for p in pids), 20, "acceptors gone")
