"""kill -9 of the sync agent in the middle of a purge (invariant 4 for deletions): no instance is
lost or half changed. Right after the kill every deleted row is `deleted` with its object intact,
`purging` (claimed: its tombstone journalled before any of its bytes went), or `purged` (object
and file gone, tombstone journalled); the study nobody deleted is untouched. The next start
finishes every claimed purge (never rolls one back: its objects may be gone) and the journal's
last word on each instance agrees with the index."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from shared.catalog import decode_batch
from shared.checksum import crc32c_file
from shared.deletion import Actor, Target, delete
from shared.keys import catalog_prefix
from shared.store import open_store
from tests.support.net import wait_for
from tests.support.sync import site, start_agent_process, write_config

STUDIES = 40
PER_STUDY = 10
DAY = 86400.0


def _journal(store: Any, name: str) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for info in store.list(catalog_prefix(name)):
        with store.open(info.key) as fh:
            for row in decode_batch(fh.read()):
                last[row.header.sop_instance_uid] = row
    return last


def test_kill_9_mid_purge_loses_and_half_changes_nothing(tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    with site(tmp_path, bucket) as s:
        s.data["retention"] = {"purge_batch": 10, "purge_interval_s": 0.05}
        config = write_config(tmp_path, s.data)
        live = s.add_study(instances=PER_STUDY, rows=16, columns=16)
        doomed = [s.add_study(instances=PER_STUDY, rows=16, columns=16) for _ in range(STUDIES)]
        agent = s.agent()
        try:
            agent.drain(timeout_s=600)
        finally:
            agent.close()
        assert s.states() == {"synced": PER_STUDY * (STUDIES + 1)}
        past = time.time() - 8 * DAY  # deleted eight days ago: every one is due
        for uid in doomed:
            delete(
                s.db, s.cache.root, s.cfg.retention, Target(uid), Actor("test"), clock=lambda: past
            )
        store = open_store(bucket)
        live_rows = s.rows("study_id = ?", (s.study_id(live),))
        total = STUDIES * PER_STUDY

        def counts() -> dict[str, int]:
            return s.states()

        proc = start_agent_process(config)
        try:
            wait_for(lambda: counts().get("purged", 0) > 0, 120, "the first purged instance")
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        mid = counts()
        assert 0 < mid.get("purged", 0) < total, f"the kill missed the purge's middle: {mid}"

        # right after the kill: every deleted instance is in one of three clean states
        journal = _journal(store, s.cfg.sync.site)
        for r in s.rows("state IN ('deleted', 'purging', 'purged')"):
            head = store.head(r["object_key"])
            uid, state = r["sop_instance_uid"], r["state"]
            if state == "deleted":  # untouched: object intact, undeletable
                assert head is not None and head.crc32c == r["crc32c"], uid
            elif state == "purged":  # gone, and the journal says so
                assert head is None and journal[uid].purged, uid
                assert not (s.cache.root / r["path"]).exists(), uid
            else:  # claimed: if its bytes went, its tombstone went first
                assert head is None or head.crc32c == r["crc32c"], uid
                assert head is not None or journal[uid].purged, uid
        for r in live_rows:  # nobody deleted it: nothing changed
            fresh = s.rows("id = ?", (r["id"],))[0]
            assert fresh["state"] == "synced"
            assert store.head(r["object_key"]).crc32c == r["crc32c"]  # type: ignore[union-attr]
            assert crc32c_file(s.cache.root / r["path"]) == r["crc32c"]

        # the next start finishes the claimed purges first, then the rest
        proc = start_agent_process(config)
        try:
            wait_for(lambda: counts().get("purged", 0) == total, 120, "every purge finished")
        finally:
            proc.send_signal(signal.SIGTERM)
            out = proc.communicate(timeout=60)[0]
        assert "purges_to_finish=" in out
        assert counts() == {"synced": PER_STUDY, "purged": total}
        journal = _journal(store, s.cfg.sync.site)
        for r in s.rows("state = 'purged'"):
            assert store.head(r["object_key"]) is None
            assert journal[r["sop_instance_uid"]].purged
        for r in live_rows:
            assert not journal[r["sop_instance_uid"]].deleted
            assert store.head(r["object_key"]).crc32c == r["crc32c"]  # type: ignore[union-attr]
