"""Administering the edge from the console, in headless Chromium (Debian's, via Playwright):
add a node and test it against a real DCMTK storescp, route to it and see storescu's instances
arrive there without a restart; sign in as each role and see only its pages; register an
unknown AE from the dashboard's "Add as node". Screenshots in test-artifacts/console/.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.forwarder import Forwarder, attach_routing, dimse_sender
from edge.http import EdgeHttp
from edge.server import EdgeServer
from edge.users import add_user
from shared.registry import REGISTRY, get_node
from shared.synthetic import StudySpec, write_study
from tests.support.console import new_page, running_http, screenshot
from tests.support.dcmtk import run, running_storescp
from tests.support.edge import edge_config, running_edge
from tests.support.net import free_port, wait_for

PASSWORD = "a long test password"


@dataclass
class Site:
    edge: EdgeServer
    http: EdgeHttp
    tmp: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}/"

    def store(self, study: StudySpec, calling_ae: str = "STORESCU") -> list[Path]:
        files = write_study(study, self.tmp / f"in-{study.accession_number}")
        r = run(
            "storescu", "-aet", calling_ae, "-aec", "HPACS", "127.0.0.1", self.edge.ports[0], *files
        )
        assert r.returncode == 0, r.stderr
        return files


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A DCMTK storescp that nothing registers: the console will."""
    port = free_port()
    out = tmp_path / "peer"
    with running_storescp(port, out, "ARCHIVE"):
        yield port, out


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    data = edge_config(tmp_path, http_port=free_port())
    with running_edge(data) as edge:
        with edge.db.write() as conn:
            for role in ("admin", "technician", "viewer"):
                add_user(conn, f"{role}1", role, PASSWORD)
        attach_routing(edge.ingestor, edge.cfg.routes)  # no route in the file: the console adds it
        send = dimse_sender("HPACS", edge.db, edge.cache, timeout_s=10)
        forwarder = Forwarder(edge.db, edge.cfg, send, poll_interval_s=0.2)
        forwarder.start()
        try:
            with running_http(edge) as http:
                yield Site(edge, http, tmp_path)
        finally:
            forwarder.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with new_page(browser, height=900) as pg:
        pg.on("dialog", lambda d: d.accept())
        yield pg


def sign_in(page: Any, site: Site, user: str, section: str = "") -> None:
    page.goto(site.url + (f"#{section}" if section else ""))
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#whoami").get_by_text(user).wait_for()


def test_add_a_node_test_it_and_route_to_it(page: Any, site: Site, peer: tuple[int, Path]) -> None:
    port, received = peer
    sign_in(page, site, "admin1", "nodes")
    page.get_by_role("button", name="Add node").click()
    form = page.locator("#node-form")
    form.get_by_label("AE title").fill("ARCHIVE")
    form.get_by_label("Host").fill("127.0.0.1")
    form.get_by_label("Port").fill("70000")
    form.get_by_role("button", name="Test connection").click()
    form.get_by_text("port: must be 1-65535, got 70000").wait_for()
    assert form.locator("#node-port").get_attribute("aria-invalid") == "true"
    form.get_by_label("Port").fill(str(port))
    form.get_by_role("button", name="Test connection").click()
    form.locator("#node-test-result").get_by_text("Success (0x0000) in").wait_for()
    form.get_by_label("Reason").fill("new archive")
    screenshot(page, "node-form")
    form.get_by_role("button", name="Save").click()
    row = page.get_by_role("row").filter(has_text="ARCHIVE")
    row.get_by_text("console:admin1").wait_for()
    node = get_node(site.edge.db.reader(), "ARCHIVE", REGISTRY)
    assert node is not None and node.port == port
    # a route to it, from the Routing page; it applies to the next instance without a restart
    page.get_by_role("link", name="Routing").click()
    rf = page.locator("#route-form")
    rf.get_by_label("Name").fill("ct-archive")
    rf.get_by_label("Modality").fill("CT")
    rf.get_by_role("button", name="Save route").click()
    rf.get_by_text("destinations: name at least one registered node").wait_for()
    rf.get_by_label("ARCHIVE").check()
    rf.get_by_role("button", name="Save route").click()
    page.get_by_role("row").filter(has_text="ct-archive").get_by_text(
        "console (console:admin1)"
    ).wait_for()
    files = site.store(StudySpec(instances_per_series=2, accession_number="ACC-FWD", modality="CT"))
    wait_for(lambda: len(list(received.rglob("*"))) >= len(files), 30, "forwarded instances")
    page.reload()
    page.get_by_role("cell", name="sent").wait_for()
    screenshot(page, "routing-console-route")
    actions = [e["action"] for e in site.http.audit.recent()]
    assert actions[:2] == ["route-add", "node-add"]


def test_each_role_sees_only_what_it_may(page: Any, site: Site) -> None:
    expected = {
        "admin1": [
            "Dashboard",
            "Nodes",
            "Browser",
            "Studies",
            "Routing",
            "Rejections",
            "Users",
            "Audit",
        ],
        "technician1": ["Dashboard", "Nodes", "Browser", "Studies", "Routing", "Rejections"],
        "viewer1": ["Browser", "Studies"],
    }
    site.store(StudySpec(instances_per_series=1, accession_number="ACC-ROLE"))
    for user, pages in expected.items():
        sign_in(page, site, user)
        nav = page.locator("#nav a:visible")
        nav.first.wait_for()
        assert nav.all_inner_texts() == pages, user
        if user == "viewer1":
            page.locator("#browser-search").wait_for()  # the study browser: a viewer's home
            page.get_by_role("link", name="Studies", exact=True).click()
            page.get_by_role("row").filter(has_text="ACC-ROLE").wait_for()
            assert page.get_by_role("button", name="Pin").count() == 0
            page.goto(site.url + "#nodes")  # typed by hand: the page is not offered
            page.locator("#browser-search").wait_for()
            screenshot(page, "role-viewer")
        if user == "technician1":
            page.get_by_role("link", name="Nodes").click()
            page.get_by_role("row").filter(has_text="STORESCU").first.wait_for()
            assert page.get_by_role("button", name="Add node").count() == 0
            assert page.get_by_role("button", name="Test connection").count() > 0
            screenshot(page, "role-technician")
        if user == "admin1":
            page.get_by_role("link", name="Users").click()
            page.get_by_role("row").filter(has_text="viewer1").wait_for()
        page.get_by_role("button", name="Sign out").click()
        page.get_by_role("heading", name="Sign in").wait_for()


def test_unknown_ae_added_as_node_from_the_dashboard(page: Any, site: Site) -> None:
    r = run("echoscu", "-aet", "NEWCT", "-aec", "HPACS", "127.0.0.1", site.edge.ports[0])
    assert r.returncode != 0  # rejected: unknown calling AE
    sign_in(page, site, "admin1", "dashboard")
    row = page.get_by_role("row").filter(has_text="NEWCT")
    row.get_by_text("Register NEWCT as a node").wait_for()
    screenshot(page, "dashboard-unknown-ae")
    row.get_by_role("button", name="Add as node").click()
    form = page.locator("#node-form")
    assert form.get_by_label("AE title").input_value() == "NEWCT"
    assert form.get_by_label("Host").input_value() == "127.0.0.1"
    form.get_by_label("echo").check()
    form.get_by_role("button", name="Save").click()  # tests first: NEWCT has no SCP
    form.get_by_role("button", name="Save anyway").wait_for()
    form.get_by_role("button", name="Save anyway").click()
    page.get_by_role("row").filter(has_text="NEWCT").get_by_text("console:admin1").wait_for()
    r = run("echoscu", "-aet", "NEWCT", "-aec", "HPACS", "127.0.0.1", site.edge.ports[0])
    assert r.returncode == 0, r.stderr  # admitted at the next association
