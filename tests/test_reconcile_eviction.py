"""The edge's start-up reconcile while the sync agent evicts (found by bench/soak.py).

The edge and the sync agent are separate processes that run at the same time, so an edge
restarted after a crash reconciles its cache while the agent may be evicting studies. Files
the agent unlinks through the lifecycle (`synced -> evicting -> evicted`) must never be
reported as "index rows without their file ... the cache was altered outside hpacs" (an ERROR
that sends an admin looking for tampering); a file really removed outside hpacs still is.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from edge.reconcile import reconcile
from tests.support.sync import site

STUDIES = 30
INSTANCES = 10


def test_eviction_while_the_edge_reconciles_is_not_a_missing_file(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'bucket'}"
    with site(tmp_path, url, cache_high_watermark="1B", cache_low_watermark="1B") as s:
        for _ in range(STUDIES):
            s.add_study(instances=INSTANCES)
        agent = s.agent()
        agent.drain(timeout_s=120)
        assert s.states() == {"synced": STUDIES * INSTANCES}
        done = threading.Event()
        reports: list[list[str]] = []

        def evict() -> None:
            try:
                agent.evictor.run()
            finally:
                done.set()

        evictor = threading.Thread(target=evict)
        evictor.start()
        while not done.is_set():  # reconcile again and again while study after study goes
            reports.append(reconcile(s.db, s.cache).missing_files)
        evictor.join()
        agent.close()
        assert s.states() == {"evicted": STUDIES * INSTANCES}
        assert len(reports) >= 2, "the reconciles did not overlap the eviction"
        assert [m for m in reports if m] == []


def test_a_file_removed_outside_hpacs_is_still_reported(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'bucket'}"
    with site(tmp_path, url) as s:
        s.add_study(instances=3)
        agent = s.agent()
        agent.drain(timeout_s=60)
        agent.close()
        row = s.rows()[0]
        os.unlink(s.cache.root / row["path"])
        assert reconcile(s.db, s.cache).missing_files == [row["sop_instance_uid"]]
