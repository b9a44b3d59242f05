"""Fault tests of the sync agent: kill -9 mid-upload, the store down during ingest, and an
eviction racing recalls."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from edge.recall import StoreRecaller
from shared.checksum import crc32c_bytes
from shared.errors import PacsError
from sync.evictor import EvictionReport
from tests.support.dcmtk import run
from tests.support.edge import edge_config, running_edge
from tests.support.gcs import BUCKET, Emulator, fault_proxy, gcs_store, running_emulator
from tests.support.net import wait_for
from tests.support.sync import Site, site, start_agent_process, sync_config, write_config

HOUR = 3600.0


def _verify_all_synced(s: Site, store: Any) -> None:
    rows = s.rows()
    assert rows and {r["state"] for r in rows} == {"synced"}, s.states()
    for r in rows:
        info = store.head(r["object_key"])
        assert info is not None and info.crc32c == r["crc32c"]


def test_kill_9_mid_upload_loses_nothing_invariant_4(tmp_path: Path) -> None:
    """The agent process is SIGKILLed with uploads in flight (a proxy slows each one down);
    a restarted agent recovers the stuck rows and finishes: every instance synced and verified,
    one object per instance, no conflict (nothing uploaded twice with different content)."""
    with running_emulator() as emu, fault_proxy(emu.port) as proxy:
        proxy.rules.append(lambda m, p: 0.25 if m == "POST" else None)
        data = sync_config(
            tmp_path, f"gs://{BUCKET}/kill", emulator_host=proxy.url, upload_concurrency=4
        )
        s = Site(tmp_path, data)
        try:
            for _ in range(4):
                s.add_study(6)
            proc = start_agent_process(write_config(tmp_path, data))
            try:
                wait_for(lambda: s.states().get("synced", 0) >= 4, 30, "first uploads")
                wait_for(lambda: s.states().get("uploading", 0) > 0, 10, "uploads in flight")
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                assert proc.stdout is not None
                proc.stdout.close()
            stuck = s.states().get("uploading", 0)
            assert stuck > 0, s.states()
            store = gcs_store(emu.url, prefix="kill")
            agent = s.agent(store=store)
            try:
                agent.acquire_lock()  # the dead process's lock is gone with it
                from sync.recovery import recover

                assert recover(s.db, agent.cache_dir).uploads_reset == stuck
                agent.drain()
            finally:
                agent.close()
            _verify_all_synced(s, store)
            objects = list(store.list("instances/"))
            assert len(objects) == len(s.rows()) == 24
            assert list(store.list("conflicts/")) == []
        finally:
            s.close()


def test_store_down_during_ingest_backlog_drains_zero_lost(tmp_path: Path) -> None:
    """The emulator stops; the edge keeps acknowledging C-STOREs (DCMTK storescu); the backlog
    grows with retry state in the rows; the emulator comes back and everything drains."""
    gcs_data = tmp_path / "gcs"
    emu = Emulator(port=_free())
    emu.start(gcs_data)
    try:
        gcs_store(emu.url).create_bucket()
        data: dict[str, Any] = edge_config(tmp_path)
        data["sync"] = sync_config(tmp_path, f"gs://{BUCKET}", emulator_host=emu.url)["sync"]
        with running_edge(data) as server:
            s = Site(tmp_path, data)
            agent = s.agent()
            runner = threading.Thread(target=agent.run, daemon=True)
            runner.start()
            try:
                _storescu(server, tmp_path, "a", 3)
                wait_for(lambda: s.states() == {"synced": 3}, 20, "first study synced")
                emu.stop()
                _storescu(server, tmp_path, "b", 4)  # acknowledged while the store is down
                wait_for(
                    lambda: len(s.rows("state = 'cached' AND attempts > 0")) == 4,
                    20,
                    "failed attempts recorded",
                )
                assert all("transient" in r["last_error"] for r in s.rows("state = 'cached'"))
                emu.start(gcs_data)
                wait_for(lambda: s.states() == {"synced": 7}, 30, "backlog drained")
            finally:
                agent.stop()
                runner.join(30)
                agent.close()
            _verify_all_synced(s, gcs_store(emu.url))
            assert agent.status().backlog_count == 0
            s.close()
    finally:
        emu.stop()


def _free() -> int:
    from tests.support.net import free_port

    return free_port()


def _storescu(server: Any, tmp_path: Path, name: str, n: int) -> None:
    from shared.synthetic import StudySpec, write_study

    files = write_study(StudySpec(instances_per_series=n), tmp_path / "modality" / name)
    r = run("storescu", "-aet", "STORESCU", "-aec", "HPACS", "127.0.0.1", server.ports[0], *files)
    assert r.returncode == 0, r.stderr


def test_eviction_racing_recalls_never_serves_half_a_file(tmp_path: Path) -> None:
    """Evictions and recalls of one study run at the same time, many rounds. Every path a
    recall returns holds exactly the indexed bytes (or is already gone again, never partial);
    rows always end in a consistent state: a file exactly when the state is local."""
    with site(
        tmp_path,
        f"file://{tmp_path / 'bucket'}",
        cache_high_watermark="1B",
        cache_low_watermark="1B",
    ) as s:
        uid = s.add_study(12)
        agent = s.agent()
        agent.drain()
        crcs = {r["id"]: r["crc32c"] for r in s.rows()}
        study_id = s.study_id(uid)
        recaller = StoreRecaller(s.db, s.cache, agent.store, concurrency=4, settle_timeout_s=10)
        served = partial = 0
        reports: list[EvictionReport] = []
        try:
            for _ in range(15):
                reports.append(EvictionReport())
                evict = threading.Thread(
                    target=agent.evictor.evict_study, args=(study_id, 1e12, reports[-1])
                )
                evict.start()
                for iid in crcs:
                    try:
                        path = recaller._submit(iid).result()
                        data = path.read_bytes()
                    except FileNotFoundError:
                        continue  # evicted again after the recall: gone whole, not partial
                    except PacsError:
                        continue
                    served += 1
                    partial += crc32c_bytes(data) != crcs[iid]
                evict.join()
                recaller.recall_many(list(crcs))  # everything back before the next round
        finally:
            recaller.close()
            agent.close()
        assert partial == 0 and served > 0
        assert sum(r.instances_evicted for r in reports) > 0  # the race did happen
        for r in s.rows():
            local = r["state"] in ("synced", "cached")
            assert (s.cache.root / r["path"]).exists() == local, r["state"]
        assert list(s.cache.tmp.iterdir()) == []
