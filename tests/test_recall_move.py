"""C-MOVE of an evicted study (DCMTK movescu -> edge -> DCMTK storescp): read through from the
object store, bit-identical, and back in the cache as `synced`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom

from tests.support.dcmtk import movescu, storescp
from tests.support.edge import DCMTK_AETS, edge_config, running_edge
from tests.support.net import free_port, port_open, wait_for
from tests.support.sync import Site, sync_config

HOUR = 3600.0


def test_cmove_brings_an_evicted_study_back_bit_identical(tmp_path: Path) -> None:
    dest_port = free_port()
    perms = ["echo", "store", "find", "move", "get", "commit"]
    nodes = [
        {"ae_title": a, "host": "127.0.0.1", "port": 104, "permissions": perms} for a in DCMTK_AETS
    ]
    nodes.append(
        {"ae_title": "STORESCP", "host": "127.0.0.1", "port": dest_port, "permissions": ["store"]}
    )
    data: dict[str, Any] = edge_config(tmp_path, nodes=nodes)
    data["sync"] = sync_config(
        tmp_path,
        f"file://{tmp_path / 'bucket'}",
        cache_high_watermark="1B",
        cache_low_watermark="1B",
    )["sync"]
    out = tmp_path / "received"
    with running_edge(data) as server:
        s = Site(tmp_path, data)
        agent = s.agent()
        try:
            uid = s.add_study(5)
            originals = {
                r["sop_instance_uid"]: (s.cache.root / r["path"]).read_bytes() for r in s.rows()
            }
            agent.drain()
            assert agent.evictor.run().instances_evicted == 5
            assert s.states(uid) == {"evicted": 5}
            scp = storescp(dest_port, out)
            try:
                wait_for(lambda: port_open(dest_port), 10, "storescp")
                r = movescu(server.ports[0], "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}")
                assert r.returncode == 0, r.stderr
            finally:
                scp.terminate()
                scp.communicate(timeout=10)
        finally:
            agent.close()
            s.close()
    received = {}
    for p in out.iterdir():
        ds = pydicom.dcmread(p)
        received[str(ds.SOPInstanceUID)] = ds
    assert set(received) == set(originals)
    for sop, raw in originals.items():
        orig = pydicom.dcmread(io.BytesIO(raw))
        assert received[sop].PixelData == orig.PixelData
        assert received[sop].file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID
    s2 = Site(tmp_path, data)
    try:
        assert s2.states(uid) == {"synced": 5}
        for r in s2.rows():
            assert (s2.cache.root / r["path"]).read_bytes() == originals[r["sop_instance_uid"]]
    finally:
        s2.close()
