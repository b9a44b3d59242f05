"""Issue 12, defect 1 (background scrub): the sync agent re-verifies the cache at
`sync.scrub_bytes_per_s`, repairs a damaged file from the bucket, resumes after a restart and
reports its progress in `hpacs-sync status` and `/metrics`."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics
from shared.scrubstate import load_progress
from sync.cli import main as sync_main
from sync.scrub import Scrubber
from tests.support.damage import flip_byte
from tests.support.net import wait_for
from tests.support.sync import Site, site, write_config

FAST = 1024**3  # bytes per second: a test cache is read at once


def _synced(s: Site, instances: int) -> list[Path]:
    uid = s.add_study(instances)
    agent = s.agent()
    try:
        agent.drain()
    finally:
        agent.close()
    assert s.states(uid) == {"synced": instances}
    return [s.cache.root / r["path"] for r in s.rows("1 ORDER BY id")]


def _scrape(s: Site) -> dict[str, float]:
    e = s.cfg.edge
    body = metrics.render(metrics.edge_registry(e.index_path, e.cache_dir, lambda: 0)).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name.startswith("hpacs_scrub")
    }


def test_scrub_finds_a_flipped_byte_and_repairs_it_from_the_bucket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with site(tmp_path, f"file://{tmp_path / 'bucket'}", scrub_bytes_per_s=FAST) as s:
        files = _synced(s, 4)
        original = files[2].read_bytes()
        damaged = flip_byte(files[2])
        agent = s.agent()
        try:
            agent.start_scrub()  # the thread `hpacs-sync run` starts
            wait_for(lambda: load_progress(s.db.reader()).passes >= 1, 20, "a full scrub pass")
        finally:
            agent.close()
        assert files[2].read_bytes() == original  # the verified cloud copy is back
        assert s.states() == {"synced": 4}
        (q,) = (s.cache.root / "quarantine").glob("*.dcm")
        assert q.read_bytes() == damaged
        detail = s.db.reader().execute("SELECT detail FROM events").fetchone()[0]
        assert "detected_by=scrub" in detail and "next=refetch" in detail
        p = load_progress(s.db.reader())
        assert (p.damaged, p.verified_instances, p.cursor) == (1, 4, 0)
        assert p.verified_bytes == sum(f.stat().st_size for f in files)
        assert p.last_full_pass_at > 0

        figures = _scrape(s)
        assert figures["hpacs_scrub_damaged_total"] == 1
        assert figures["hpacs_scrub_verified_instances_total"] == 4
        assert figures["hpacs_scrub_verified_bytes_total"] == p.verified_bytes
        assert figures["hpacs_scrub_last_full_pass_timestamp_seconds"] == p.last_full_pass_at

        capsys.readouterr()
        assert sync_main(["--config", str(write_config(tmp_path, s.data)), "status"]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("scrub:"))
        assert "this pass 4/4 instances" in line and "damaged found 1" in line, line
        assert "last full pass" in line and "never" not in line, line


def test_scrub_resumes_where_it_stopped_after_a_restart(tmp_path: Path) -> None:
    with site(tmp_path, f"file://{tmp_path / 'bucket'}") as s:
        files = _synced(s, 6)
        ids = [r["id"] for r in s.rows("1 ORDER BY id")]
        first = Scrubber(s.db, s.cache.root, FAST, None)
        assert not first.run_pass(max_instances=2)  # then the agent stops
        assert load_progress(s.db.reader()).cursor == ids[1]
        flip_byte(files[0])  # behind the cursor: this pass does not read it again

        resumed = Scrubber(s.db, s.cache.root, FAST, None, min_pass_interval_s=0)
        assert resumed.progress.cursor == ids[1]
        assert resumed.run_pass()
        p = load_progress(s.db.reader())
        assert (p.verified_instances, p.pass_instances, p.damaged, p.passes) == (6, 6, 0, 1)
        assert s.states() == {"synced": 6}

        # the next pass starts from the beginning and finds it; no store here: left evicted
        assert resumed.pause_before_pass() == 0
        assert resumed.run_pass()
        assert load_progress(s.db.reader()).damaged == 1
        assert s.states() == {"synced": 5, "evicted": 1}


def test_scrub_reads_no_faster_than_its_rate(tmp_path: Path) -> None:
    with site(tmp_path, f"file://{tmp_path / 'bucket'}") as s:
        files = _synced(s, 4)
        total = sum(f.stat().st_size for f in files)
        rate = total * 4  # a quarter of a second for the whole cache
        scrubber = Scrubber(s.db, s.cache.root, rate, None)
        stop = threading.Event()
        started = time.monotonic()
        assert scrubber.run_pass(stop)
        assert time.monotonic() - started >= 0.25 - 0.03  # the throttle's 20 ms slice


def test_a_scrub_rate_of_zero_starts_nothing(tmp_path: Path) -> None:
    with site(tmp_path, f"file://{tmp_path / 'bucket'}", scrub_bytes_per_s=0) as s:
        _synced(s, 1)
        agent = s.agent()
        try:
            agent.start_scrub()
            assert agent._scrub_thread is None
        finally:
            agent.close()
        assert load_progress(s.db.reader()).verified_instances == 0
