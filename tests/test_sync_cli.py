"""`hpacs-sync` verbs, the config backup, restore from the bucket alone, and the idle agent."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from edge.cache import Cache
from edge.recall import StoreRecaller
from shared.index import Database
from shared.keys import config_prefix, restore_key, restore_status_key
from shared.registry import Node, list_nodes, upsert_node
from shared.restore import RestorePhase, RestoreRequest, RestoreStatus, new_restore_id
from shared.store import open_store
from sync.agent import AlreadyRunning
from sync.backup import DIGEST_SETTING, backup_if_changed
from sync.cli import main
from sync.restore_jobs import poll_restores
from tests.support.net import wait_for
from tests.support.sync import Site, site, start_agent_process, sync_config, write_config


def test_status_pin_unpin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = sync_config(tmp_path, f"file://{tmp_path / 'bucket'}")
    cfg = write_config(tmp_path, data)
    s = Site(tmp_path, data)
    uid = s.add_study(3)
    assert main(["--config", str(cfg), "status"]) == 0
    out = capsys.readouterr().out
    assert "backlog: 3 instances" in out and "failed: 0" in out and "never" in out
    assert main(["--config", str(cfg), "pin", uid]) == 0
    assert s.db.reader().execute("SELECT pinned FROM studies").fetchone()[0] == 1
    assert main(["--config", str(cfg), "unpin", uid]) == 0
    assert s.db.reader().execute("SELECT pinned FROM studies").fetchone()[0] == 0
    assert main(["--config", str(cfg), "pin", "1.2.3.999"]) == 1
    assert main(["--config", str(cfg), "pin", "not a uid"]) == 2
    a = s.agent()
    a.drain()
    a.close()
    assert main(["--config", str(cfg), "status"]) == 0
    out = capsys.readouterr().out
    assert "backlog: 0 instances" in out and "synced: 3" in out and "s ago" in out
    s.close()


def test_bad_watermarks_are_a_config_error(tmp_path: Path) -> None:
    data = sync_config(tmp_path, "file:///x", cache_high_watermark="90%", cache_low_watermark="5GB")
    assert main(["--config", str(write_config(tmp_path, data)), "status"]) == 2


def test_index_rebuilt_from_the_bucket_alone_invariant_5(tmp_path: Path) -> None:
    """A lost edge: a new index from `hpacs-sync restore --site`, every instance findable
    (evicted, attributes intact) and recallable bit-identical."""
    bucket = f"file://{tmp_path / 'bucket'}"
    with site(tmp_path / "old", bucket) as old:
        old.add_study(3, patient_name="RESTORE^ME")
        old.add_study(2)
        a = old.agent()
        a.drain()
        a.close()
        before = {
            r["sop_instance_uid"]: (dict(r), (old.cache.root / r["path"]).read_bytes())
            for r in old.rows()
        }
        studies = old.db.reader().execute("SELECT * FROM studies ORDER BY study_uid").fetchall()
        studies_before = [dict(r) for r in studies]
    data = sync_config(tmp_path / "new", bucket)
    data["sync"]["site"] = "other"  # the new edge may even be named differently
    cfg = write_config(tmp_path, data)
    assert main(["--config", str(cfg), "restore", "--site", "test"]) == 0
    new = Site(tmp_path / "new", data)
    try:
        rows = new.rows()
        assert {r["sop_instance_uid"] for r in rows} == set(before)
        assert {r["state"] for r in rows} == {"evicted"}
        for r in rows:
            old_row, _ = before[r["sop_instance_uid"]]
            for col in ("sop_class_uid", "instance_number", "transfer_syntax", "size", "crc32c"):
                assert r[col] == old_row[col]
            assert r["object_key"] == old_row["object_key"] and r["catalog_seq"] > 0
        cols = ("study_uid", "patient_name", "patient_id", "study_date", "num_instances")
        got = new.db.reader().execute("SELECT * FROM studies ORDER BY study_uid").fetchall()
        assert [[g[c] for c in cols] for g in got] == [[b[c] for c in cols] for b in studies_before]
        recaller = StoreRecaller(new.db, Cache(new.cfg.edge.cache_dir), open_store(bucket))
        try:
            paths = recaller.recall_many([r["id"] for r in rows])
        finally:
            recaller.close()
        for r, p in zip(rows, paths, strict=True):
            assert p.read_bytes() == before[r["sop_instance_uid"]][1]
        # restoring twice adds nothing
        assert main(["--config", str(cfg), "restore", "--site", "test"]) == 0
        assert len(new.rows()) == len(before)
    finally:
        new.close()


def test_config_backup_on_change_only(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'bucket'}")
    cfg_file = tmp_path / "hpacs.toml"
    cfg_file.write_text("[sync]\nsite = 'test'\n")
    db = Database(tmp_path / "index.sqlite")
    try:
        assert backup_if_changed(db, store, "test", str(cfg_file))
        assert not backup_if_changed(db, store, "test", str(cfg_file))
        with db.write() as conn:
            upsert_node(conn, Node("CT01", "10.0.0.5", 104, permissions=frozenset({"store"})))
        assert backup_if_changed(db, store, "test", str(cfg_file))
        keys = [i.key for i in store.list(config_prefix("test"))]
        assert len(keys) == 4 and sum(k.endswith("hpacs.toml") for k in keys) == 2
        nodes = json.loads(store.open(sorted(k for k in keys if k.endswith(".json"))[-1]).read())
        assert nodes["nodes"][0]["ae_title"] == "CT01"
    finally:
        db.close()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process, from /proc/<pid>/stat (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_agent_uses_little_cpu(tmp_path: Path) -> None:
    """An idle agent polls with backoff: well under 10% of a core.

    Measured on the agent's own process (/proc utime + stime) over 5 s of wall time, once its
    start-up work is done: CPU time does not grow because the machine is busy, and nothing of
    the test process (its other threads, garbage collection) is counted."""
    with site(tmp_path, f"file://{tmp_path / 'bucket'}", poll_interval_s=0.2) as s:
        proc = start_agent_process(write_config(tmp_path, s.data))
        try:
            wait_for(lambda: s.db.get_setting(DIGEST_SETTING), 60, "start-up done")
            cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
            time.sleep(5.0)  # the measurement window
            cpu, wall = _cpu_s(proc.pid) - cpu0, time.monotonic() - t0
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert cpu / wall < 0.10, f"{cpu / wall:.1%} of a core while idle"


def test_restore_request_from_the_cloud_api_is_done_with_progress(tmp_path: Path) -> None:
    """A request object under control/<site>/restores/ (what the cloud API writes) is picked up
    by the agent's poll: index rebuilt, node registry restored, recent studies prefetched."""
    bucket = f"file://{tmp_path / 'bucket'}"
    with site(tmp_path / "old", bucket) as old:
        old.add_study(3)
        with old.db.write() as conn:
            upsert_node(conn, Node("CT01", "10.0.0.5", 104, permissions=frozenset({"store"})))
        a = old.agent()
        a.drain()
        backup_if_changed(old.db, a.store, "test", "")
        a.close()
        originals = {
            r["sop_instance_uid"]: (old.cache.root / r["path"]).read_bytes() for r in old.rows()
        }
    store = open_store(bucket)
    req = RestoreRequest(
        id=new_restore_id(), site="test", requested_at=time.time(), prefetch_days=7
    )
    store.put(restore_key("test", req.id), req.to_bytes())
    with site(tmp_path / "new", bucket) as new:
        assert poll_restores(new.cfg, new.db, store) == 1
        status = RestoreStatus.from_bytes(store.open(restore_status_key("test", req.id)).read())
        assert status.phase is RestorePhase.DONE, status.error
        assert (status.instances_indexed, status.studies_to_prefetch) == (3, 1)
        assert (status.studies_prefetched, status.instances_prefetched) == (1, 3)
        assert new.states() == {"synced": 3}
        for r in new.rows():
            assert (new.cache.root / r["path"]).read_bytes() == originals[r["sop_instance_uid"]]
        assert [n.ae_title for n in list_nodes(new.db.reader())] == ["CT01"]
        assert poll_restores(new.cfg, new.db, store) == 0  # done requests are not redone


def test_run_drains_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    data = sync_config(tmp_path, f"file://{tmp_path / 'bucket'}")
    s = Site(tmp_path, data)
    try:
        s.add_study(3)
        proc = start_agent_process(write_config(tmp_path, data))
        try:
            wait_for(lambda: s.states() == {"synced": 3}, 30, "backlog drained")
            wait_for(lambda: s.rows("catalog_seq = 0") == [], 30, "catalog written")
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "sync agent stopped" in out
        assert "Patient" not in out and "DOE" not in out  # no PHI in the INFO log
    finally:
        s.close()


def test_second_agent_on_one_index_is_refused(tmp_path: Path) -> None:
    with site(tmp_path, f"file://{tmp_path / 'bucket'}") as s:
        first, second = s.agent(), s.agent()
        try:
            first.acquire_lock()
            with pytest.raises(AlreadyRunning):
                second.acquire_lock()
        finally:
            first.close()
            second.close()
