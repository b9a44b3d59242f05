"""Cloud API replicas on one PostgreSQL catalog, as processes (`serve --port N --catalog URL`).

- A STOW through one replica is found by QIDO through the other within one poll interval.
- SIGKILL of the replica applying journal objects, in the middle of a backlog, leaves nothing
  half-applied (the database holds exactly the objects up to its cursor), and a new replica
  is ready in seconds, takes over the lead and applies the rest: nothing lost, nothing twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient

from cloud_api.catalog.postgres import PostgresCatalog
from deploy.pgcluster import Cluster
from shared.keys import catalog_key, catalog_sequence
from shared.store.base import open_store
from shared.synthetic import StudySpec, catalog_rows, iter_study, write_journals
from tests.support.cloud import make_token, seed_site
from tests.support.net import free_port, port_open, wait_for
from tests.support.postgres import fresh_database

POLL_S = 1.0


def _config(tmp: Path, store_url: str) -> Path:
    cfg = tmp / "hpacs.toml"
    cfg.write_text(
        f'[cloud]\nstore_url = "{store_url}"\ndata_dir = "{tmp / "cloud"}"\n'
        f'tokens_file = "{tmp / "tokens.json"}"\ncatalog_poll_interval_s = {POLL_S}\n'
    )
    return cfg


@contextmanager
def replica(cfg: Path, catalog: str, name: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    log = open(cfg.parent / f"{name}.log", "wb")  # noqa: SIM115 - the replica's output
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_api", "--config", str(cfg), "serve",
         "--port", str(port), "--catalog", catalog],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 60, f"replica {name}")
        assert proc.poll() is None, (cfg.parent / f"{name}.log").read_text()
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        log.close()


def test_stow_through_one_replica_is_found_through_the_other(
    tmp_path: Path, pg_cluster: Cluster
) -> None:
    url = fresh_database(pg_cluster)
    store_url = f"file://{tmp_path / 'bucket'}"
    seed_site(open_store(store_url), "north", StudySpec(patient_id="N1"))
    cfg = _config(tmp_path, store_url)
    token = make_token_file(tmp_path, "admin")
    agent = make_token_file(tmp_path, "agent")
    with replica(cfg, url, "r1") as (_, r1), replica(cfg, url, "r2") as (_, r2):
        c1 = DICOMwebClient(r1 + "/dicomweb", headers={"Authorization": f"Bearer {token}"})
        c2 = DICOMwebClient(r2 + "/dicomweb", headers={"Authorization": f"Bearer {token}"})
        assert len(c1.search_for_studies()) == len(c2.search_for_studies()) == 1
        up = DICOMwebClient(r2 + "/dicomweb", headers={"Authorization": f"Bearer {agent}"})
        spec = StudySpec(patient_id="STOW1", instances_per_series=2)
        stored_at = time.monotonic()
        up.store_instances(list(iter_study(spec)))
        wait_for(
            lambda: c1.search_for_studies(search_filters={"PatientID": "STOW1"}),
            POLL_S,
            "the STOW through r2 in r1's answers",
        )
        assert time.monotonic() - stored_at < POLL_S + 1
        assert len(c1.search_for_instances(search_filters={"PatientID": "STOW1"})) == 2
        # an edge's journal object is applied once (by the leading replica), seen by both
        seed_site(open_store(store_url), "south", StudySpec(patient_id="S1"))
        for c in (c1, c2):
            wait_for(
                lambda c=c: c.search_for_studies(search_filters={"PatientID": "S1"}),
                3 * POLL_S,
                "south's study",
            )


def make_token_file(tmp: Path, role: str) -> str:
    from shared.config import CloudConfig

    cfg = CloudConfig(tokens_file=str(tmp / "tokens.json"))
    sites = ["cloud"] if role == "agent" else ["*"]
    return make_token(cfg, f"{role}-{os.urandom(3).hex()}", role, sites)


def test_sigkill_of_the_applying_replica_mid_batch(tmp_path: Path, pg_cluster: Cluster) -> None:
    url = fresh_database(pg_cluster)
    store_url = f"file://{tmp_path / 'bucket'}"
    store = open_store(store_url)
    per_object, total = 500, 60_000
    objects = write_journals(
        lambda k, d: store.put(k, d), catalog_rows(total, sites=1, seed=3), batch=per_object
    )["site01"]
    last = catalog_key("site01", objects)
    cfg = _config(tmp_path, store_url)
    watcher = PostgresCatalog(url, pool_size=2)  # reads only: never asks for the lead
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloud_api", "--config", str(cfg), "serve",
             "--port", str(free_port()), "--catalog", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def mid_batch() -> bool:
            cursor = watcher.cursors().get("site01", "")
            return catalog_key("site01", 2) <= cursor < catalog_key("site01", objects - 10)

        wait_for(mid_batch, 120, "the replica in the middle of the backlog")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # nothing half-applied: exactly the objects up to the cursor are in, each whole
        applied = catalog_sequence(watcher.cursors()["site01"])
        assert 2 <= applied < objects
        assert watcher.counts()["instances"] == applied * per_object
        _consistent(watcher)
        with replica(cfg, url, "r2"):
            # r2 took the lead (r1's session and its lock died with it) and applied the rest
            # before its port opened; a third replica only connects: ready in seconds
            assert watcher.cursors()["site01"] == last
            started = time.monotonic()
            with replica(cfg, url, "r3") as (_, r3):
                ready_s = time.monotonic() - started
                token = make_token_file(tmp_path, "admin")
                r = requests.get(
                    r3 + "/dicomweb/studies?limit=1",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                )
                assert r.status_code == 200 and "additional results" in r.headers["Warning"]
        assert ready_s < 15, ready_s
        assert watcher.counts()["instances"] == total  # nothing lost, nothing twice
        _consistent(watcher)
    finally:
        watcher.close()


def _consistent(c: PostgresCatalog) -> None:
    """Counters agree with the rows: every applied object was applied whole, once."""
    rows = c._query(
        "SELECT (SELECT count(*) FROM instances) AS i, (SELECT sum(num_instances) FROM studies)"
        " AS s, (SELECT sum(num_instances) FROM series) AS se, (SELECT count(*) FROM copies) AS c",
        [],
    )[0]
    assert rows["i"] == rows["s"] == rows["se"] == rows["c"], rows
