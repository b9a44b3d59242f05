"""Issue 12, defect 8: an evicted instance whose bucket object is gone is flagged `lost`.

Against the GCS emulator: a study is synced and evicted, one object is deleted from the
bucket, and a C-MOVE (DCMTK movescu -> DCMTK storescp) asks for the study. The recall's
NotFound marks the row `lost` (one ERROR line naming what to do); /metrics counts it;
C-FIND still finds it (invariant 3) with InstanceAvailability UNAVAILABLE; `hpacs-sync
status` lists it; the modality sending it again brings it back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.locate import InstanceRef, Locator
from shared import metrics
from shared.errors import PacsError
from shared.store import open_store
from sync.cli import main as sync_main
from tests.support.damage import destination, messages, rig
from tests.support.dcmtk import movescu, run
from tests.support.gcs import BUCKET, Emulator, gcs_emulator, gcs_store
from tests.support.sync import write_config

__all__ = ["gcs_emulator"]
HOUR = 3600.0


def _lost_gauge(index_path: Path, cache_dir: Path) -> float:
    body = metrics.render(metrics.edge_registry(index_path, cache_dir, lambda: 0)).decode()
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == "hpacs_instances_lost":
                return s.value
    raise AssertionError("hpacs_instances_lost is not in /metrics")


def _availability(port: int, out: Path, study: str, series: str) -> dict[str, str]:
    out.mkdir(exist_ok=True)
    keys = [
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study}",
        f"SeriesInstanceUID={series}",
        "SOPInstanceUID",
        "InstanceAvailability",
    ]
    args = [a for k in keys for a in ("-k", k)]
    r = run("findscu", "-S", "-aet", "FINDSCU", "-aec", "HPACS", "-X", "-od", out, *args,
            "127.0.0.1", str(port))  # fmt: skip
    assert r.returncode == 0, r.stderr
    found = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
    return {str(d.SOPInstanceUID): str(d.InstanceAvailability) for d in found}


def test_an_evicted_instance_whose_object_is_gone_is_marked_lost(
    tmp_path: Path,
    gcs_emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"gs://{BUCKET}"
    marks = {"cache_high_watermark": "1B", "cache_low_watermark": "1B"}
    with rig(tmp_path, url, emulator_host=gcs_emulator.url, **marks) as r:
        uid = r.site.add_study(3)
        rows = r.rows(uid)
        victim = rows[1]
        sop = victim["sop_instance_uid"]
        original = r.cache_file(victim).read_bytes()
        agent = r.site.agent()
        try:
            agent.drain()
            r.site.age_study(uid, 2 * HOUR)
            assert agent.evictor.run().instances_evicted == 3
        finally:
            agent.close()
        gcs_store(gcs_emulator.url).delete(r.row(sop)["object_key"])  # the bucket lost it

        out = tmp_path / "received"
        with destination(r.dest_port, out):
            res = movescu(r.server.ports[0], "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}")
        assert "SubOperationsCompleteOneOrMoreFailures" in res.stderr, res.stderr  # exit 68
        assert len(list(out.iterdir())) == 2

        assert r.row(sop)["state"] == "lost"
        assert r.site.states(uid) == {"synced": 2, "lost": 1}
        (line,) = messages(caplog, logging.ERROR, "instance lost")
        assert sop in line and "send the study again" in line and "hpacs-sync status" in line
        cfg = r.site.cfg.edge
        assert _lost_gauge(cfg.index_path, cfg.cache_dir) == 1

        # still found (invariant 3), but says it cannot be had
        series = str(pydicom.dcmread(r.cache_file(rows[0])).SeriesInstanceUID)
        avail = _availability(r.server.ports[0], tmp_path / "find", uid, series)
        assert avail[sop] == "UNAVAILABLE"
        assert {v for k, v in avail.items() if k != sop} == {"ONLINE"}

        capsys.readouterr()
        assert sync_main(["--config", str(write_config(tmp_path, r.data)), "status"]) == 0
        status = capsys.readouterr().out
        assert "lost: 1" in status and sop in status

        # the modality sends it again: back to cached, served and uploaded like any other
        resent = tmp_path / "resent.dcm"
        resent.write_bytes(original)
        res = run("storescu", "-aet", "STORESCU", "-aec", "HPACS", "127.0.0.1",
                  str(r.server.ports[0]), resent)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert r.row(sop)["state"] == "cached"
        assert _lost_gauge(cfg.index_path, cfg.cache_dir) == 0


def test_retry_lost_recalls_an_object_put_back_in_the_bucket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"file://{tmp_path / 'bucket'}"
    marks = {"cache_high_watermark": "1B", "cache_low_watermark": "1B"}
    with rig(tmp_path, url, **marks) as r:
        uid = r.site.add_study(2)
        agent = r.site.agent()
        try:
            agent.drain()
            r.site.age_study(uid, 2 * HOUR)
            assert agent.evictor.run().instances_evicted == 2
        finally:
            agent.close()
        row = r.rows(uid)[0]
        store = open_store(url)
        kept = store.open(row["object_key"]).read()
        store.delete(row["object_key"])
        with pytest.raises(PacsError):
            Locator(r.server.db, r.server.cache, r.server.recaller).read(InstanceRef.from_row(row))
        assert r.row(row["sop_instance_uid"])["state"] == "lost"
        config = str(write_config(tmp_path, r.data))
        assert sync_main(["--config", config, "retry-lost"]) == 1  # still gone
        assert r.row(row["sop_instance_uid"])["state"] == "lost"

        store.put(row["object_key"], kept)  # the admin restored it from another copy
        capsys.readouterr()
        assert sync_main(["--config", config, "retry-lost"]) == 0
        assert "1 lost instances recalled" in capsys.readouterr().out
        assert r.row(row["sop_instance_uid"])["state"] == "synced"
        assert r.cache_file(row).read_bytes() == kept
