"""Deletion end to end, with real peers: an edge (storescu in, findscu and movescu out, DCMTK
storescp as the move destination), its sync agent on the bucket, and the cloud API's catalog on
the same bucket (QIDO through dicomweb-client).

- delete on the edge: C-FIND finds nothing at once, QIDO after the catalog round; undelete
  within the grace: C-MOVE returns the same bytes (recalled from the bucket);
- DICOMweb DELETE on the cloud for an edge site: a control request the site's agent applies
  (no inbound connection), with the site's retention deciding; for the STOW site `cloud`:
  applied at once, objects purged after the grace.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.filereader import _read_file_meta_info, read_preamble

from cloud_api.deletions import purge_due
from edge.audit import EdgeAudit, cli_actor
from edge.server import EdgeServer
from edge.studies import Caller, Studies
from shared.deletion import Target
from shared.store import open_store
from shared.synthetic import StudySpec, iter_study, write_study
from sync.agent import Agent
from sync.deletions import poll_deletions
from tests.support.cloud import CloudServer, cloud_config, make_token, running_cloud
from tests.support.dcmtk import movescu, run, storescp
from tests.support.edge import DCMTK_AETS, edge_config, running_edge
from tests.support.net import free_port, port_open, wait_for
from tests.support.postgres import fresh_database
from tests.support.sync import sync_config

DAY = 86400.0


@dataclass
class World:
    edge: EdgeServer
    agent: Agent
    cloud: CloudServer
    admin: str
    reader: str
    dest_port: int
    tmp: Path

    def store(self, label: str, **spec: Any) -> tuple[str, dict[str, bytes]]:
        files = write_study(StudySpec(**spec), self.tmp / label)
        r = run("storescu", "-aec", "HPACS", "127.0.0.1", self.edge.ports[0], *files)
        assert r.returncode == 0, r.stderr
        ds = {pydicom.dcmread(f).SOPInstanceUID: f.read_bytes() for f in files}
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        return study, ds

    def sync(self) -> None:
        """The agent's round (upload, journal) and the cloud's catalog poll."""
        self.agent.drain()
        self.cloud.poll()

    def findscu(self, study: str) -> int:
        with tempfile.TemporaryDirectory() as out:
            r = run(
                "findscu", "-S", "-aet", "FINDSCU", "-aec", "HPACS", "-X", "-od", out,
                "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
                "-k", "SOPInstanceUID", "127.0.0.1", self.edge.ports[0],
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            return len(list(Path(out).glob("rsp*.dcm")))

    def qido(self, study: str) -> int:
        c = DICOMwebClient(self.cloud.dicomweb, headers={"Authorization": f"Bearer {self.reader}"})
        return len(c.search_for_instances(study_instance_uid=study))

    def delete_url(self, study: str, **q: str) -> requests.Response:
        return requests.delete(
            f"{self.cloud.dicomweb}/studies/{study}",
            params=q,
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=30,
        )

    def studies(self) -> tuple[Studies, EdgeAudit]:
        audit = EdgeAudit(self.edge.cfg)
        return Studies(self.edge.cfg, self.edge.db, audit), audit


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    """`indirect` param "postgresql": the cloud catalog on the session's PostgreSQL cluster."""
    catalog = ""
    if getattr(request, "param", "sqlite") == "postgresql":
        catalog = fresh_database(request.getfixturevalue("pg_cluster"))
    dest_port = free_port()
    perms = ["echo", "store", "find", "move", "get"]
    nodes = [
        {"ae_title": a, "host": "127.0.0.1", "port": 104, "permissions": perms} for a in DCMTK_AETS
    ]
    nodes.append(
        {"ae_title": "STORESCP", "host": "127.0.0.1", "port": dest_port, "permissions": ["store"]}
    )
    bucket = f"file://{tmp_path / 'bucket'}"
    data = edge_config(tmp_path, nodes=nodes)
    data["sync"] = sync_config(tmp_path, bucket, site="site1")["sync"]
    data["retention"] = {"delete_grace_days": 7, "rules": [{"name": "recent", "years": 5}]}
    cfg = cloud_config(tmp_path, catalog=catalog)
    admin, reader = make_token(cfg, "root", "admin", []), make_token(cfg, "rad", "reader", ["*"])
    with running_edge(data) as edge, running_cloud(cfg, open_store(bucket)) as cloud:
        agent = Agent(edge.cfg, edge.db)
        try:
            yield World(edge, agent, cloud, admin, reader, dest_port, tmp_path)
        finally:
            agent.close()


def _dataset_bytes(data: bytes) -> bytes:
    fh = io.BytesIO(data)
    read_preamble(fh, False)
    _read_file_meta_info(fh)
    return fh.read()


def test_delete_then_undelete_on_the_edge(world: World) -> None:
    study, originals = world.store("a", study_date="20000101", instances_per_series=4)
    keep, _ = world.store("b", study_date="20000101")
    world.sync()
    assert (world.findscu(study), world.qido(study)) == (4, 4)
    studies, audit = world.studies()
    try:
        studies.delete(Caller(cli_actor()), Target(study), "wrong patient", override=False)
        assert world.findscu(study) == 0  # at once, before any catalog round
        assert world.qido(study) == 4  # the cloud has not heard yet
        world.sync()
        assert world.qido(study) == 0 and world.qido(keep) == 3
        # undelete within the grace: back as evicted, recalled from the bucket on a C-MOVE
        studies.undelete(Caller(cli_actor()), Target(study))
    finally:
        audit.close()
    assert world.findscu(study) == 4
    world.sync()
    assert world.qido(study) == 4
    out = world.tmp / "moved"
    scp = storescp(world.dest_port, out, "STORESCP")
    try:
        wait_for(lambda: port_open(world.dest_port), what="storescp")
        mv = movescu(world.edge.ports[0], "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
        assert mv.returncode == 0, mv.stderr
    finally:
        scp.terminate()
        scp.communicate(timeout=10)
    moved = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in out.iterdir()}
    assert set(moved) == set(originals)
    for uid, data in originals.items():
        assert _dataset_bytes(moved[uid]) == _dataset_bytes(data), uid


def test_cloud_delete_of_an_edge_site_goes_through_its_agent(world: World) -> None:
    old, _ = world.store("o", study_date="20000101")
    new, _ = world.store("n", study_date=time.strftime("%Y%m%d"))
    world.sync()
    reader = requests.delete(
        f"{world.cloud.dicomweb}/studies/{old}",
        headers={"Authorization": f"Bearer {world.reader}"},
        timeout=30,
    )
    assert reader.status_code == 403
    r = world.delete_url(old, reason="duplicate")
    assert r.status_code == 202, r.text
    (req,) = r.json()["requests"]
    assert (req["site"], req["phase"], req["instances"]) == ("site1", "pending", 3)
    status = lambda rq: requests.get(  # noqa: E731
        world.cloud.url + rq["status_url"],
        headers={"Authorization": f"Bearer {world.admin}"},
        timeout=30,
    ).json()
    assert status(req)["phase"] == "pending" and world.findscu(old) == 3
    # the site's agent polls control/site1/deletions/ (no inbound connection) and applies it
    assert poll_deletions(world.edge.cfg, world.edge.db, world.agent.store) == 1
    assert status(req)["phase"] == "done" and world.findscu(old) == 0
    world.sync()
    assert world.qido(old) == 0
    # the site's retention decides: refused, then an admin's override with a reason
    (req,) = world.delete_url(new).json()["requests"]
    poll_deletions(world.edge.cfg, world.edge.db, world.agent.store)
    got = status(req)
    assert got["phase"] == "refused" and "under retention" in got["detail"]
    (req,) = world.delete_url(new, reason="sent twice", override="true").json()["requests"]
    poll_deletions(world.edge.cfg, world.edge.db, world.agent.store)
    assert status(req)["phase"] == "done" and world.findscu(new) == 0
    assert world.delete_url("1.2.3.4.5.6").status_code == 404
    recs = [r for r in world.cloud.services.audit.path.read_text().splitlines() if '"delete"' in r]
    assert len(recs) == 5 and all('"token": "root"' in r for r in recs[1:])


@pytest.mark.parametrize("world", ["sqlite", "postgresql"], indirect=True)
def test_cloud_delete_of_the_stow_site_and_its_purge(world: World) -> None:
    spec = StudySpec(patient_id="STOW1", instances_per_series=2)
    datasets = list(iter_study(spec))
    agent = make_token(world.cloud.cfg, "uploader", "agent", ["cloud"])
    DICOMwebClient(
        world.cloud.dicomweb, headers={"Authorization": f"Bearer {agent}"}
    ).store_instances(datasets)
    study = str(datasets[0].StudyInstanceUID)
    assert world.qido(study) == 2
    keys = [k.key for k in world.agent.store.list(f"instances/{study}/")]
    assert len(keys) == 2
    r = world.delete_url(study, reason="test upload")
    assert r.status_code == 202, r.text
    (req,) = r.json()["requests"]
    assert (req["site"], req["phase"]) == ("cloud", "done")
    assert world.qido(study) == 0  # at once: applied to the catalog directly
    svc = world.cloud.services
    assert purge_due(svc, time.time() + 6 * DAY) == 0
    assert all(world.agent.store.head(k) is not None for k in keys)
    assert purge_due(svc, time.time() + 7 * DAY + 60) == 2
    assert all(world.agent.store.head(k) is None for k in keys)
    assert purge_due(svc, time.time() + 30 * DAY) == 0  # done once
    st = requests.get(
        world.cloud.url + req["status_url"],
        headers={"Authorization": f"Bearer {world.admin}"},
        timeout=30,
    )
    assert st.json()["phase"] == "purged"
    # a catalog rebuilt from the journal agrees: the purge tombstones are in catalog/cloud/
    svc.catalog.reset()
    world.cloud.poll()
    assert world.qido(study) == 0
