"""Eviction executed against a real index, cache and store; C-FIND (DCMTK findscu) still finds
evicted studies; recall brings them back bit-identical; start-up recovery of stuck rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from edge.recall import StoreRecaller
from edge.server import EdgeServer
from shared.errors import ChecksumMismatch
from shared.store import open_store
from sync.evictor import EvictionReport
from sync.recovery import recover
from tests.support.dcmtk import run
from tests.support.edge import edge_config, running_edge
from tests.support.sync import Site, sync_config

HOUR = 3600.0


@pytest.fixture
def edge_site(tmp_path: Path) -> Iterator[tuple[EdgeServer, Site]]:
    """A running edge (for C-FIND) and the same index and cache seen as a site."""
    data: dict[str, Any] = edge_config(tmp_path)
    url = f"file://{tmp_path / 'bucket'}"
    data["sync"] = sync_config(
        tmp_path,
        url,
        min_cache_age_s=HOUR,
        cache_high_watermark="1B",
        cache_low_watermark="1B",
    )["sync"]
    with running_edge(data) as server:
        s = Site(tmp_path, data)
        try:
            yield server, s
        finally:
            s.close()


def findscu_study(server: EdgeServer, tmp_path: Path, study_uid: str) -> list[pydicom.Dataset]:
    out = tmp_path / "rsp"
    out.mkdir(exist_ok=True)
    for old in out.glob("*"):
        old.unlink()
    args = ["-S", "-aet", "FINDSCU", "-aec", "HPACS", "-X", "-od", out, "127.0.0.1"]
    args += [
        server.ports[0],
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
    ]
    args += ["-k", "PatientName", "-k", "NumberOfStudyRelatedInstances"]
    r = run("findscu", *args)
    assert r.returncode == 0, r.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_only_synced_unpinned_old_studies_are_evicted_invariants_2_3(
    edge_site: tuple[EdgeServer, Site], tmp_path: Path
) -> None:
    server, s = edge_site
    old = s.add_study(3, patient_name="OLD^SYNCED")
    young = s.add_study(2, patient_name="YOUNG^SYNCED")
    pinned = s.add_study(2, patient_name="OLD^PINNED")
    agent = s.agent()
    agent.drain()
    unsynced = s.add_study(2, patient_name="OLD^UNSYNCED")  # ingested after the upload pass
    for uid in (old, pinned, unsynced):
        s.age_study(uid, 2 * HOUR)
    with s.db.write() as conn:
        conn.execute("UPDATE studies SET pinned = 1 WHERE study_uid = ?", (pinned,))
    originals = {r["sop_instance_uid"]: (s.cache.root / r["path"]).read_bytes() for r in s.rows()}

    report = agent.evictor.run()

    assert report.studies_evicted == 1 and report.plan is not None
    assert report.plan.skipped == {"pinned": 1, "young": 1, "unsynced": 1}
    assert s.states(old) == {"evicted": 3}
    assert s.states(young) == {"synced": 2}
    assert s.states(pinned) == {"synced": 2}
    assert s.states(unsynced) == {"cached": 2}
    for r in s.rows():
        assert (s.cache.root / r["path"]).exists() == (r["state"] != "evicted")
    # invariant 3: the evicted study is still found, with its attributes
    found = findscu_study(server, tmp_path, old)
    assert [str(d.PatientName) for d in found] == ["OLD^SYNCED"]
    assert int(found[0].NumberOfStudyRelatedInstances) == 3
    # and comes back bit-identical
    recaller = StoreRecaller(s.db, s.cache, agent.store, concurrency=4)
    try:
        refs = s.rows("state = 'evicted'")
        paths = recaller.recall_many([r["id"] for r in refs])
    finally:
        recaller.close()
        agent.close()
    for r, p in zip(refs, paths, strict=True):
        assert p.read_bytes() == originals[r["sop_instance_uid"]]
    assert s.states(old) == {"synced": 3}


def test_cloud_copy_reverified_before_delete_invariant_2(
    edge_site: tuple[EdgeServer, Site],
) -> None:
    _, s = edge_site
    uid = s.add_study(3)
    agent = s.agent()
    agent.drain()
    s.age_study(uid, 2 * HOUR)
    lost = s.rows()[0]
    agent.store.delete(lost["object_key"])  # the bucket lost one object after the upload
    report = agent.evictor.run()
    assert report.instances_evicted == 0 and report.reuploads == 1
    assert s.states(uid) == {"synced": 2, "cached": 1}
    assert all((s.cache.root / r["path"]).exists() for r in s.rows())
    agent.drain()  # uploaded again, then evictable
    assert agent.evictor.run().instances_evicted == 3
    agent.close()


def test_study_touched_after_the_plan_is_not_evicted(edge_site: tuple[EdgeServer, Site]) -> None:
    _, s = edge_site
    uid = s.add_study(2)
    agent = s.agent()
    agent.drain()
    s.age_study(uid, 2 * HOUR)
    plan_access = agent.evictor.candidates()[0].last_access
    with s.db.write() as conn:  # a retrieve touched it after the plan was made
        conn.execute("UPDATE studies SET last_access = ?", (plan_access + 10,))
    report = EvictionReport()
    agent.evictor.evict_study(s.study_id(uid), plan_access, report)
    assert report.abandoned == 1 and report.instances_evicted == 0
    assert s.states(uid) == {"synced": 2}
    assert all((s.cache.root / r["path"]).exists() for r in s.rows())
    agent.close()


def test_startup_recovery_of_stuck_rows_invariant_4(edge_site: tuple[EdgeServer, Site]) -> None:
    _, s = edge_site
    up = s.add_study(2)
    agent = s.agent()
    claimed = agent.uploader.claim(10)  # a crash right after claiming
    assert len(claimed) == 2 and s.states(up) == {"uploading": 2}
    rep = recover(s.db, agent.cache_dir)
    assert rep.uploads_reset == 2 and s.states(up) == {"cached": 2}
    agent.drain()
    s.age_study(up, 2 * HOUR)
    got = agent.evictor._claim(s.study_id(up), 1e12)  # a crash mid-eviction ...
    assert len(got) == 2 and s.states(up) == {"evicting": 2}
    (agent.cache_dir / got[0].path).unlink()  # ... after one file was deleted
    rep = recover(s.db, agent.cache_dir)
    assert (rep.evictions_completed, rep.evictions_undone) == (1, 1)
    assert s.states(up) == {"evicted": 1, "synced": 1}
    agent.close()


def test_recall_rejects_corrupt_object_and_keeps_row_evicted(
    edge_site: tuple[EdgeServer, Site],
) -> None:
    _, s = edge_site
    uid = s.add_study(1)
    agent = s.agent()
    agent.drain()
    s.age_study(uid, 2 * HOUR)
    assert agent.evictor.run().instances_evicted == 1
    row = s.rows()[0]
    agent.store.put(row["object_key"], b"rotten bytes", if_absent=False)
    recaller = StoreRecaller(s.db, s.cache, open_store(agent.store.url))
    try:
        with pytest.raises(ChecksumMismatch):
            recaller.recall_many([row["id"]])
    finally:
        recaller.close()
        agent.close()
    assert s.states() == {"evicted": 1}
    assert not (s.cache.root / row["path"]).exists()
    assert list(s.cache.tmp.iterdir()) == []


def test_recall_interrupted_by_a_crash_is_reset_at_edge_start_invariant_4(
    edge_site: tuple[EdgeServer, Site],
) -> None:
    from edge.reconcile import reconcile
    from shared.lifecycle import State, transition

    _, s = edge_site
    uid = s.add_study(2)
    agent = s.agent()
    agent.drain()
    s.age_study(uid, 2 * HOUR)
    assert agent.evictor.run().instances_evicted == 2
    row = s.rows()[0]
    with s.db.write() as conn:  # a recall claimed the row, then the process died
        assert transition(conn, row["id"], State.EVICTED, State.RECALLING)
    (s.cache.tmp / "tmpdead.recall").write_bytes(b"half a file")
    assert recover(s.db, agent.cache_dir).uploads_reset == 0  # the agent leaves it alone
    assert s.states() == {"evicted": 1, "recalling": 1}
    rep = reconcile(s.db, s.cache)
    assert rep.recalls_reset == 1 and rep.temp_removed == 1
    assert s.states() == {"evicted": 2}
    recaller = StoreRecaller(s.db, s.cache, agent.store)
    try:
        assert len(recaller.recall_many([r["id"] for r in s.rows()])) == 2
    finally:
        recaller.close()
        agent.close()
    assert s.states() == {"synced": 2}
