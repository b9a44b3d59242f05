"""Issue 12, defect 5: a retrieve never waits on an eviction.

Rows left `evicting` by a sync agent that died mid-eviction (files still on disk) made C-MOVE
wait for them to settle, past 600 s. Now the retrieve serves the file (verified) and cancels
that eviction (`evicting -> synced`); the evictor unlinks only after winning
`evicting -> evicted` in the same transaction, so a cancelled eviction never deletes a file.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from edge.locate import InstanceRef, Locator
from tests.support.damage import dataset_of, destination, rig
from tests.support.dcmtk import movescu
from tests.support.retrieve import dataset_bytes

HOUR = 3600.0


def test_cmove_of_rows_left_evicting_by_a_crash_completes_at_once(tmp_path: Path) -> None:
    with rig(tmp_path, f"file://{tmp_path / 'bucket'}") as r:
        uid = r.site.add_study(4)
        originals = {row["sop_instance_uid"]: r.cache_file(row).read_bytes() for row in r.rows(uid)}
        agent = r.site.agent()
        try:
            agent.drain()
            r.site.age_study(uid, 2 * HOUR)
            claimed = agent.evictor._claim(r.site.study_id(uid), 1e12)  # then the agent died
        finally:
            agent.close()
        assert len(claimed) == 4 and r.site.states(uid) == {"evicting": 4}

        out = tmp_path / "received"
        started = time.monotonic()
        with destination(r.dest_port, out):
            res = movescu(
                r.server.ports[0],
                "QueryRetrieveLevel=STUDY",
                f"StudyInstanceUID={uid}",
                timeout=30,  # before the fix: 60 s of waiting per instance
            )
        elapsed = time.monotonic() - started
        assert res.returncode == 0, res.stderr
        assert elapsed < 10, elapsed
        got = {str(pydicom.dcmread(p).SOPInstanceUID): dataset_bytes(p) for p in out.iterdir()}
        assert got == {
            sop: dataset_of(raw, tmp_path / "orig.dcm") for sop, raw in originals.items()
        }
        assert r.site.states(uid) == {"synced": 4}
        assert all(r.cache_file(row).exists() for row in r.rows(uid))


def test_a_cancelled_eviction_never_unlinks_the_file_being_served(tmp_path: Path) -> None:
    with rig(tmp_path, f"file://{tmp_path / 'bucket'}") as r:
        uid = r.site.add_study(2)
        agent = r.site.agent()
        try:
            agent.drain()
            r.site.age_study(uid, 2 * HOUR)
            claimed = agent.evictor._claim(r.site.study_id(uid), 1e12)
            assert len(claimed) == 2
            # a retrieve reads one of them while the eviction is under way: it cancels it
            row = r.rows(uid)[0]
            ref = InstanceRef.from_row(row)
            data = Locator(r.server.db, r.server.cache, r.server.recaller).read(ref)
            assert data == r.cache_file(row).read_bytes()
            # the evictor carries on: only the instance it still holds is deleted
            with r.site.db.write() as conn:
                gone = agent.evictor._delete(conn, claimed)
        finally:
            agent.close()
        assert [g.id for g in gone] == [claimed[1].id]
        states = {x["id"]: x["state"] for x in r.rows(uid)}
        assert states == {claimed[0].id: "synced", claimed[1].id: "evicted"}
        assert r.cache_file(row).exists()
