"""The edge console in headless Chromium: what an admin sees, one screenshot per page.

Debian's chromium is driven by Playwright (no browser download); the edge, its HTTP side, DCMTK
peers and the index are real. Screenshots land in test-artifacts/console/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge import routequeue
from edge.forwarder import attach_routing
from edge.http import EdgeHttp
from edge.server import EdgeServer
from shared.synthetic import StudySpec, write_study
from tests.support.console import TOKEN, new_page, running_http, screenshot
from tests.support.dcmtk import run, running_storescp
from tests.support.edge import edge_config, running_edge
from tests.support.net import free_port


@dataclass
class Site:
    edge: EdgeServer
    http: EdgeHttp
    peer_port: int
    tmp: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}/"

    def store(self, study: StudySpec, calling_ae: str = "STORESCU") -> list[Path]:
        files = write_study(study, self.tmp / f"in-{study.accession_number}")
        port = self.edge.ports[0]
        r = run("storescu", "-aet", calling_ae, "-aec", "HPACS", "127.0.0.1", port, *files)
        assert r.returncode == 0, r.stderr
        return files


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[int]:
    """A DCMTK storescp: the C-ECHO partner and a routing destination."""
    port = free_port()
    with running_storescp(port, tmp_path / "peer"):
        yield port


@pytest.fixture
def site(tmp_path: Path, peer: int) -> Iterator[Site]:
    data = edge_config(tmp_path, http_port=free_port())
    data["nodes"] += [
        {"ae_title": "STORESCP", "host": "127.0.0.1", "port": peer, "permissions": ["store"]},
        {"ae_title": "OFFLINE", "host": "127.0.0.1", "port": free_port(), "permissions": []},
    ]
    data["routes"] = [{"name": "ct-to-offline", "destinations": ["OFFLINE"], "modality": "CT"}]
    data["sync"] = {"store_url": f"file://{tmp_path}/bucket"}
    with running_edge(data) as edge, running_http(edge) as http:
        attach_routing(edge.ingestor, edge.cfg.routes)
        yield Site(edge, http, peer, tmp_path)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with new_page(browser) as pg:
        yield pg


def sign_in(page: Any, site: Site, section: str = "dashboard", token: str = TOKEN) -> None:
    page.goto(site.url + f"#{section}")
    page.get_by_text("Sign in with the console token instead").click()
    page.get_by_label("Console token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def test_console_asks_for_the_token_and_refuses_a_wrong_one(page: Any, site: Site) -> None:
    page.goto(site.url)
    assert page.get_by_role("heading", name="Sign in").is_visible()
    screenshot(page, "login")
    sign_in(page, site, token="not-the-token")
    page.get_by_text("wrong token").wait_for()
    page.reload()
    assert not page.get_by_role("link", name="Nodes").is_visible()
    sign_in(page, site)
    page.get_by_role("heading", name="Dashboard").wait_for()


def test_dashboard_shows_cache_backlog_and_last_errors(page: Any, site: Site) -> None:
    site.store(StudySpec(instances_per_series=3, accession_number="ACC1"))
    run("echoscu", "-aet", "STRANGER", "-aec", "HPACS", "127.0.0.1", site.edge.ports[0])
    sign_in(page, site)
    backlog = page.locator("#card-backlog")
    backlog.get_by_text("3 instances").wait_for()
    assert "KB" in page.locator("#card-cache .big").inner_text()
    assert "disk used vs watermarks" in page.locator("#card-usage").inner_text().lower()
    assert page.locator("#card-assoc .big").inner_text() == "0"
    page.get_by_role("cell", name="unknown calling AE").wait_for()
    screenshot(page, "dashboard")


def test_nodes_page_lists_nodes_and_tests_the_connection(page: Any, site: Site) -> None:
    sign_in(page, site, "nodes")
    table = page.get_by_role("table")
    for ae in ("STORESCP", "OFFLINE", "STORESCU", "FINDSCU"):
        table.get_by_role("cell", name=ae, exact=True).wait_for()
    row = page.get_by_role("row").filter(has_text="STORESCP")
    assert str(site.peer_port) in row.inner_text()
    row.get_by_role("button", name="Test connection").click()
    result = row.locator(".result")
    result.get_by_text("Success (0x0000) in").wait_for()
    rtt = float(result.inner_text().split(" in ")[1].split(" ms")[0])
    assert 0 < rtt < 10_000
    offline = page.get_by_role("row").filter(has_text="OFFLINE")
    offline.get_by_role("button", name="Test connection").click()
    offline.get_by_text("Failed: no association").wait_for()
    screenshot(page, "nodes")


def test_studies_page_shows_state_after_ingest_and_pins(page: Any, site: Site) -> None:
    markup = "<b>MR</b> <img src=x onerror=alert(1)>"  # header text is shown, never parsed
    spec = StudySpec(
        instances_per_series=2, accession_number="ACC-PIN", modality="MR", study_description=markup
    )
    site.store(spec)
    sign_in(page, site, "studies")
    row = page.get_by_role("row").filter(has_text="ACC-PIN")
    row.wait_for()
    assert markup in row.inner_text()
    assert row.locator("img, b").count() == 0
    assert row.locator(".cache-state").inner_text() == "local"
    assert row.locator(".sync-state").inner_text() == "pending"
    assert "1 / 2" in row.inner_text()
    row.get_by_role("button", name="Pin").click()
    row.get_by_role("button", name="Unpin").wait_for()
    assert row.get_by_text("pinned", exact=True).is_visible()
    pinned = site.edge.db.reader().execute("SELECT pinned FROM studies").fetchone()[0]
    assert pinned == 1
    screenshot(page, "studies")


def test_routing_page_shows_dead_letters_and_retries_them(page: Any, site: Site) -> None:
    site.store(StudySpec(instances_per_series=2, accession_number="ACC-RT"))
    now = time.time()
    with site.edge.db.write() as conn:  # the forwarder's own steps: claim, then give up
        for job in routequeue.claim(conn, "OFFLINE", now, 10):
            routequeue.mark_failed(conn, job, "association refused", now, 0, permanent=True)
    sign_in(page, site, "routing")
    page.get_by_role("heading", name="Dead letters").wait_for()
    dead = page.get_by_role("row").filter(has_text="association refused")
    assert dead.count() == 2
    screenshot(page, "routing")
    page.get_by_role("button", name="Retry 2 dead job(s)").click()
    page.get_by_role("cell", name="pending").wait_for()
    states = routequeue.queue_depth(site.edge.db.reader())
    assert (states["pending"], states["dead"]) == (2, 0)


def test_rejections_page_lists_rejected_associations(page: Any, site: Site) -> None:
    r = run("echoscu", "-aet", "STRANGER", "-aec", "HPACS", "127.0.0.1", site.edge.ports[0])
    assert r.returncode != 0
    sign_in(page, site, "rejections")
    row = page.get_by_role("row").filter(has_text="STRANGER")
    row.wait_for()
    assert "unknown calling AE" in row.inner_text()
    assert "127.0.0.1" in row.inner_text()
    screenshot(page, "rejections")
