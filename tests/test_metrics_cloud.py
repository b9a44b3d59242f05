"""The cloud API's /metrics (admin token), /healthz and /readyz (open) on a real port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.store.base import open_store
from shared.synthetic import StudySpec
from tests.support.cloud import CloudServer, cloud_config, make_token, running_cloud, seed_site


@pytest.fixture
def cloud(tmp_path: Path, catalog_url: str) -> Iterator[tuple[CloudServer, str]]:
    cfg = cloud_config(tmp_path, catalog=catalog_url)
    store = open_store(cfg.store_url)
    seed_site(store, "a", StudySpec(instances_per_series=2))
    admin = make_token(cfg, "ops", "admin", ["*"])
    with running_cloud(cfg, store) as server:
        yield server, admin


def scrape(server: CloudServer, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = requests.get(
        server.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(r.text)
        for s in f.samples
    }


def test_cloud_metrics_count_requests_by_route_and_status(cloud: tuple[CloudServer, str]) -> None:
    server, admin = cloud
    auth = {"Authorization": f"Bearer {admin}"}
    route = (("method", "GET"), ("route", "/dicomweb/studies"))
    before = scrape(server, admin)
    for _ in range(3):
        assert requests.get(server.dicomweb + "/studies", headers=auth).status_code == 200
    assert requests.get(server.dicomweb + "/studies").status_code == 401
    after = scrape(server, admin)

    def delta(name: str, labels: tuple[tuple[str, str], ...]) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert delta("hpacs_http_requests_total", (*route, ("status", "200"))) == 3
    assert delta("hpacs_http_requests_total", (*route, ("status", "401"))) == 1
    assert delta("hpacs_http_request_duration_seconds_count", route) == 4
    assert ("hpacs_catalog_lag_seconds", ()) in after


def test_catalog_lag_grows_until_the_replica_polls(cloud: tuple[CloudServer, str]) -> None:
    server, admin = cloud
    assert scrape(server, admin)[("hpacs_catalog_lag_seconds", ())] == 0
    seed_site(server.store, "a", StudySpec(instances_per_series=1))  # an edge journals more
    assert scrape(server, admin)[("hpacs_catalog_lag_seconds", ())] > 0
    server.poll()
    assert scrape(server, admin)[("hpacs_catalog_lag_seconds", ())] == 0


def test_cloud_probes_are_open_and_metrics_needs_an_admin(
    cloud: tuple[CloudServer, str], tmp_path: Path
) -> None:
    server, _ = cloud
    r = requests.get(server.url + "/healthz", timeout=30)
    assert (r.status_code, r.json()["status"]) == (200, "alive")
    r = requests.get(server.url + "/readyz", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"catalog": "ok", "store": "ok"}
    assert requests.get(server.url + "/metrics").status_code == 401
    reader = make_token(server.cfg, "rad", "reader", ["a"])
    r = requests.get(
        server.url + "/metrics", headers={"Authorization": f"Bearer {reader}"}, timeout=30
    )
    assert r.status_code == 403
