"""Disaster recovery end to end: ingest through the edge (storescu), let the sync agent upload,
lose the edge's cache and index, ask for a restore through the cloud API, and the site's agent
(polling control/<site>/restores/) rebuilds it: C-FIND finds everything and C-MOVE returns every
instance bit-identical to what was first stored (invariant 5)."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import requests
from pydicom.filereader import _read_file_meta_info, read_preamble

from shared.index import Database
from shared.store.base import open_store
from shared.synthetic import StudySpec, write_study
from tests.support.cloud import cloud_config, make_token, running_cloud
from tests.support.dcmtk import movescu, run, storescp
from tests.support.edge import edge_config, running_edge
from tests.support.net import free_port, port_open, wait_for
from tests.support.sync import start_agent_process, sync_config, write_config


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    try:
        out = proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
    return out or ""


def test_disaster_recovery_restore_through_the_api(tmp_path: Path, catalog_url: str) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    dest_port = free_port()
    data = edge_config(tmp_path)
    data["nodes"].append(
        {"ae_title": "STORESCP", "host": "127.0.0.1", "port": dest_port, "permissions": ["store"]}
    )
    data.update(
        {k: v for k, v in sync_config(tmp_path, bucket, site="drsite").items() if k != "edge"}
    )
    data["restore"] = {"prefetch_days": 7, "poll_interval_s": 0.1}
    config = write_config(tmp_path, {k: v for k, v in data.items() if k != "nodes"})  # agent

    originals: dict[str, bytes] = {}
    for i, date in enumerate(("20240101", time.strftime("%Y%m%d"))):
        files = write_study(
            StudySpec(patient_id=f"DR{i}", study_date=date, instances_per_series=3),
            tmp_path / f"in{i}",
        )
        originals.update({pydicom.dcmread(f).SOPInstanceUID: f.read_bytes() for f in files})
    all_files = sorted((tmp_path).glob("in*/*.dcm"))

    # 1. ingest through the edge, 2. the agent uploads and journals everything
    with running_edge(data) as edge:
        port = edge.ports[0]
        res = run("storescu", "-aec", "HPACS", "127.0.0.1", str(port), *all_files)
        assert res.returncode == 0, res.stderr
    agent = start_agent_process(config)
    try:
        db = Database(Path(data["edge"]["data_dir"]) / "index.sqlite")

        def all_synced() -> bool:
            rows = db.reader().execute("SELECT state FROM instances").fetchall()
            return len(rows) == len(originals) and all(r[0] == "synced" for r in rows)

        wait_for(all_synced, 60, "every instance synced")
        db.close()
    finally:
        _stop(agent)

    # 3. the edge is lost: cache and index gone
    shutil.rmtree(data["edge"]["data_dir"])
    assert not Path(data["edge"]["data_dir"]).exists()

    # 4. an admin asks for a restore through the cloud API; the site's agent does it
    cfg = cloud_config(tmp_path, catalog=catalog_url)
    admin = make_token(cfg, "root", "admin", [])
    auth = {"Authorization": f"Bearer {admin}"}
    with running_cloud(cfg, open_store(bucket)) as api:
        r = requests.post(f"{api.url}/api/sites/drsite/restores", headers=auth, timeout=30)
        assert r.status_code == 201, r.text
        status_url = api.url + r.json()["status_url"]
        agent = start_agent_process(config)
        try:

            def done() -> bool:
                phase = requests.get(status_url, headers=auth, timeout=30).json()["phase"]
                assert phase != "failed", requests.get(status_url, headers=auth, timeout=30).json()
                return phase == "done"

            wait_for(done, 120, "restore done")
        finally:
            out = _stop(agent)
        final = requests.get(status_url, headers=auth, timeout=30).json()
        assert final["instances_indexed"] == len(originals), (final, out[-2000:])
        # both studies arrived just now, within restore.prefetch_days: back in the cache
        assert (final["studies_prefetched"], final["instances_prefetched"]) == (2, 6), final
        recs = api.services.audit.path.read_text()
        assert '"action": "restore"' in recs and '"action": "restore-status"' in recs

    # 5. C-FIND finds everything, C-MOVE returns every instance bit-identical
    with running_edge(data) as edge:
        port = edge.ports[0]
        found = run(
            "findscu",
            "-S",
            "-aec",
            "HPACS",
            "-k",
            "QueryRetrieveLevel=IMAGE",
            "-k",
            "SOPInstanceUID",
            "-k",
            "StudyInstanceUID",
            "127.0.0.1",
            str(port),
        )
        assert found.returncode == 0
        assert all(uid in found.stderr + found.stdout for uid in originals)
        out_dir = tmp_path / "moved"
        scp = storescp(dest_port, out_dir, "STORESCP")
        try:
            wait_for(lambda: port_open(dest_port), what="storescp")
            studies = {
                pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in all_files
            }
            for study in studies:
                mv = movescu(
                    port, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}", timeout=120
                )
                assert mv.returncode == 0, mv.stderr
        finally:
            _stop(scp)
        moved = {pydicom.dcmread(p).SOPInstanceUID: p for p in out_dir.iterdir()}
        assert set(moved) == set(originals)
        for uid, original in originals.items():
            assert _dataset_bytes(moved[uid].read_bytes()) == _dataset_bytes(original), uid


def _dataset_bytes(data: bytes) -> bytes:
    """The bytes after the file meta: what was sent, independent of who wrote the meta."""
    fh = io.BytesIO(data)
    read_preamble(fh, False)
    _read_file_meta_info(fh)
    return fh.read()
