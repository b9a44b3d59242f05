"""The cloud API's console in headless Chromium: what an admin sees, one screenshot per page.

Debian's chromium driven by Playwright (no browser download); the cloud API runs on a free port
over a file:// bucket seeded the way a sync agent journals instances. Screenshots land in
test-artifacts/cloud-console/.
"""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cloud_api.auth import TokenStore
from shared.keys import restore_status_key
from shared.restore import RestorePhase, RestoreStatus
from shared.store.base import ObjectStore, open_store
from shared.synthetic import StudySpec
from tests.support.cloud import CloudServer, cloud_config, make_token, running_cloud, seed_site
from tests.support.console import new_page
from tests.support.net import wait_for

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "cloud-console"
MARKUP = "<b>ops</b><img src=x onerror=alert(1)>"  # shown as text, never parsed


@dataclass
class Cloud:
    server: CloudServer
    store: ObjectStore
    admin: str
    reader: str

    @property
    def url(self) -> str:
        return self.server.url + "/console"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, module_catalog_url: str) -> Iterator[Cloud]:
    tmp = tmp_path_factory.mktemp("cloud-console")
    cfg = cloud_config(tmp, catalog=module_catalog_url)
    store = open_store(cfg.store_url)
    seed_site(store, "north", StudySpec(series_count=2, instances_per_series=3))
    seed_site(store, "cloud", StudySpec(instances_per_series=1))  # what STOW to the API writes
    admin = make_token(cfg, "console-admin", "admin", [])
    reader = make_token(cfg, "rad-north", "reader", ["north"])
    make_token(cfg, MARKUP, "reader", ["north", "south"])
    make_token(cfg, "old-agent", "agent", ["north"])
    TokenStore(cfg.tokens_file).revoke("old-agent")
    with running_cloud(cfg, store) as server:
        yield Cloud(server, store, admin, reader)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    errors: list[str] = []
    with new_page(browser) as pg:
        pg.on("dialog", lambda d: d.accept())  # the restore confirmation
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        yield pg
    assert not [e for e in errors if "Content Security Policy" in e]  # the shell obeys its CSP


def sign_in(page: Any, cloud: Cloud, section: str, token: str) -> None:
    page.goto(f"{cloud.url}#{section}")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_shell_is_public_but_holds_no_data(cloud: Cloud) -> None:
    r = requests.get(cloud.server.url + "/", timeout=30)  # a bare host redirects to the shell
    assert r.url == cloud.url
    assert r.status_code == 200 and "Sign in" in r.text
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    for asset in ("/console/assets/app.js", "/console/shared/console.js"):
        assert requests.get(cloud.server.url + asset, timeout=30).status_code == 200
    assert requests.get(cloud.server.url + "/console/assets/../app.py", timeout=30).status_code in (
        401,
        403,
        404,
    )
    assert requests.get(cloud.server.url + "/api/sites", timeout=30).status_code == 401


def test_sites_show_counts_once_catalog_rows_exist(page: Any, cloud: Cloud) -> None:
    page.goto(cloud.url)
    assert page.get_by_role("heading", name="Sign in").is_visible()
    screenshot(page, "login")
    sign_in(page, cloud, "sites", "hpacs_not-a-token")
    page.get_by_text("The token was refused.").wait_for()
    assert not page.get_by_role("link", name="Sites").is_visible()
    sign_in(page, cloud, "sites", cloud.admin)
    north = page.get_by_role("row").filter(has_text="north")
    north.wait_for()
    assert north.locator(".studies").inner_text() == "1"
    assert north.locator(".instances").inner_text() == "6"
    assert "catalog/north/" in north.inner_text()
    assert "current" in north.inner_text()
    seed_site(cloud.store, "north", StudySpec(instances_per_series=2))  # not applied yet
    page.reload()
    north.get_by_text("behind").wait_for()
    assert north.locator(".studies").inner_text() == "1"
    seed_site(cloud.store, "south", StudySpec(instances_per_series=2))  # a new site journals
    cloud.server.poll()
    page.reload()
    north.get_by_text("current").wait_for()
    assert north.locator(".studies").inner_text() == "2"
    assert north.locator(".instances").inner_text() == "8"
    south = page.get_by_role("row").filter(has_text="south")
    south.wait_for()
    assert (south.locator(".studies").inner_text(), south.locator(".instances").inner_text()) == (
        "1",
        "2",
    )
    screenshot(page, "sites")


def test_restore_request_shows_in_the_list_with_its_state(page: Any, cloud: Cloud) -> None:
    sign_in(page, cloud, "restores", cloud.admin)
    page.get_by_label("Site").select_option("north")
    page.get_by_text("No restore has been requested for site north.").wait_for()
    page.get_by_role("button", name="Request restore").click()
    row = page.locator("tr[data-restore]")
    row.wait_for()
    assert row.locator(".phase").inner_text() == "pending"
    rid = row.get_attribute("data-restore")
    assert rid
    now = time.time()
    status = RestoreStatus(  # what the site's sync agent writes beside the request
        rid,
        "north",
        RestorePhase.PREFETCHING,
        now,
        started_at=now - 5,
        agent="edge-north/4242",
        instances_indexed=6,
        studies_total=1,
        studies_to_prefetch=4,
        studies_prefetched=3,
    )
    cloud.store.put(restore_status_key("north", rid), status.to_bytes())
    row.locator(".phase").get_by_text("prefetching").wait_for()  # the list follows the job
    text = row.inner_text()
    assert "6 instances indexed" in text and "3 / 4 studies prefetched" in text
    assert "edge-north/4242" in text
    screenshot(page, "restores")


def test_tokens_page_lists_creates_and_revokes(page: Any, cloud: Cloud) -> None:
    sign_in(page, cloud, "tokens", cloud.admin)
    page.get_by_role("cell", name="rad-north", exact=True).wait_for()
    odd = page.get_by_role("row").filter(has_text="<b>ops</b>")
    assert MARKUP in odd.inner_text()
    assert page.locator("tbody b, tbody img").count() == 0
    assert "north, south" in odd.inner_text()
    revoked = page.get_by_role("row").filter(has_text="old-agent")
    assert "revoked" in revoked.inner_text()
    admin = page.get_by_role("row").filter(has_text="console-admin")
    assert "active" in admin.inner_text() and "all" in admin.inner_text()
    assert "hpacs_" not in page.locator("main").inner_text()  # no token, no hash is listed
    # create: the secret is shown once, and works
    form = page.locator("#token-form")
    form.get_by_label("Name").fill("rad-east")
    form.get_by_label("Role").select_option("reader")
    form.get_by_label("Sites").fill("north")
    form.get_by_role("button", name="Create token").click()
    secret = page.get_by_label("New token")
    secret.wait_for()
    token = secret.input_value()
    assert token.startswith("hpacs_")
    qido = cloud.server.url + "/dicomweb/studies"
    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(qido, headers=auth, timeout=30).status_code == 200
    row = page.get_by_role("row").filter(has_text="rad-east")
    assert "active" in row.inner_text()
    screenshot(page, "tokens")
    page.reload()  # shown once: gone after a reload
    page.get_by_role("row").filter(has_text="rad-east").wait_for()
    assert page.get_by_label("New token").count() == 0
    page.get_by_role("row").filter(has_text="rad-east").get_by_role("button", name="Revoke").click()
    page.get_by_role("row").filter(has_text="rad-east").get_by_text("revoked").wait_for()
    assert requests.get(qido, headers=auth, timeout=30).status_code == 401
    # validation names the field; the audit trail has both actions, never the secret
    r = requests.post(
        cloud.server.url + "/api/tokens",
        json={"name": "x", "role": "root"},
        headers={"Authorization": f"Bearer {cloud.admin}"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["field"] == "role"
    log = cloud.server.services.audit.path.read_text()
    assert "token created name=rad-east role=reader" in log and "token revoked name=rad-east" in log
    assert token not in log


def test_restore_form_offers_edge_sites_only(page: Any, cloud: Cloud) -> None:
    sign_in(page, cloud, "restores", cloud.admin)
    page.locator("#restore-site").wait_for()
    options = page.locator("#restore-site option")
    assert "cloud" not in options.all_inner_texts() and "north" in options.all_inner_texts()
    r = requests.post(
        cloud.server.url + "/api/sites/cloud/restores",
        json={},
        headers={"Authorization": f"Bearer {cloud.admin}"},
        timeout=30,
    )
    assert r.status_code == 400 and "no edge restores it" in r.json()["detail"]


def test_audit_page_filters_and_pages_on_the_server(page: Any, cloud: Cloud) -> None:
    study = "1.2.826.0.1.3680043.99.777"
    auth = {"Authorization": f"Bearer {cloud.reader}"}
    for _ in range(3):  # a reader's reads of one study, and refusals on admin routes
        requests.get(cloud.server.url + f"/dicomweb/studies/{study}/metadata", headers=auth)
    for _ in range(60):
        requests.get(cloud.server.url + "/api/sites", headers=auth, timeout=30)
    sign_in(page, cloud, "audit", cloud.admin)
    # the filter form is drawn with the page's data: fill it once that has arrived, or a late
    # render replaces the filled form with an empty one
    page.locator("#audit-pager").wait_for()
    page.get_by_label("Token").fill("rad-north")
    page.get_by_label("Outcome").select_option("denied")
    page.get_by_role("button", name="Filter").click()
    pager = page.locator("#audit-pager")
    rows = page.locator("main tbody tr")

    def filtered() -> bool:  # the unfiltered first page also reads "records 1–50"
        texts = rows.all_inner_texts()
        return len(texts) == 50 and all("rad-north" in t and "denied" in t for t in texts)

    wait_for(filtered, 15, "the filtered page")
    pager.get_by_text("records 1–50 (more older)").wait_for()
    page.get_by_role("button", name="Older").click()
    pager.get_by_text("records 51–").wait_for()
    page.get_by_role("button", name="Clear").click()
    # Clear redraws the page unfiltered: wait for that before filling the next filter
    wait_for(lambda: any("console-admin" in t for t in rows.all_inner_texts()), 15, "cleared")
    page.get_by_label("Study UID").fill(study[:-1])  # a prefix no other test's study shares
    page.get_by_role("button", name="Filter").click()
    pager.get_by_text("records 1–3").wait_for()
    wait_for(lambda: all(study in t for t in rows.all_inner_texts()), 15, "study filter")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1300, width  # long cells wrap or are cut, the page fits the window
    screenshot(page, "audit-filtered")
    body = requests.get(
        cloud.server.url + "/api/audit?action=wado-metadata&limit=2&offset=1",
        headers={"Authorization": f"Bearer {cloud.admin}"},
        timeout=30,
    ).json()
    assert (len(body["events"]), body["offset"], body["more"]) == (2, 1, False)
    assert {e["action"] for e in body["events"]} == {"wado-metadata"}
    since = body["events"][0]["time"] + 1
    later = requests.get(
        cloud.server.url + f"/api/audit?action=wado-metadata&since={since}",
        headers={"Authorization": f"Bearer {cloud.admin}"},
        timeout=30,
    ).json()
    assert later["events"] == []


def test_audit_page_highlights_denied_requests_and_verifies_the_chain(
    page: Any, cloud: Cloud
) -> None:
    # Denied: no token. Refused requests are counted per client address and window, keeping
    # the first few paths; earlier tests of this module (and the shell's own session probe)
    # were refused from 127.0.0.1 in the same window, so this one comes from 127.0.0.2.
    port = int(cloud.server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0)
    )
    conn.request("GET", "/api/" + MARKUP.replace(" ", "%20"))
    assert conn.getresponse().status == 401
    conn.close()
    sign_in(page, cloud, "audit", cloud.admin)
    page.locator("#chain-state").get_by_text("intact").wait_for()
    denied = page.locator("tr.denied").filter(has_text="/api/<b>ops</b>")
    denied.wait_for()
    assert "GET /api/" + MARKUP in denied.inner_text()
    assert "(none)" in denied.inner_text()
    assert re.search(r"denied 401 ×\d+", denied.inner_text())  # counted per client and window
    assert page.locator("tbody b, tbody img").count() == 0
    ok = page.locator("tr:not(.denied)").filter(has_text="console-admin").first
    assert "ok 200" in ok.inner_text()
    screenshot(page, "audit")


def test_reader_token_lands_on_the_study_browser_not_admin_pages(page: Any, cloud: Cloud) -> None:
    sign_in(page, cloud, "sites", cloud.reader)
    for section in ("sites", "restores", "tokens", "audit"):
        page.goto(f"{cloud.url}#{section}")
        page.wait_for_url(f"{cloud.url}#browser")
        page.locator("main[data-page] #browser-results table").wait_for()  # north's study
        assert page.locator("main [role=alert]").count() == 0  # nothing refused
        assert not page.get_by_role("link", name="Sites").is_visible()
        assert page.get_by_role("link", name="Studies", exact=True).is_visible()
    page.locator("#nav").get_by_role("link", name="Viewer").click()
    page.locator("main[data-page]").get_by_text("Signed in as rad-north").wait_for()
    page.get_by_role("button", name="Open the viewer").click()
    page.wait_for_url(cloud.server.url + "/viewer/")
    assert any(c["name"] == "hpacs_session" for c in page.context.cookies())
    screenshot(page, "reader")


def test_audit_page_shows_an_edited_record_as_a_broken_chain(page: Any, tmp_path: Path) -> None:
    cfg = cloud_config(tmp_path)
    store = open_store(cfg.store_url)
    admin = make_token(cfg, "console-admin", "admin", [])
    reader = make_token(cfg, "rad", "reader", ["north"])
    with running_cloud(cfg, store) as server:
        for _ in range(3):  # denied: a reader on an admin route
            requests.get(server.url + "/api/sites", headers={"Authorization": f"Bearer {reader}"})
        log = server.services.audit.path
        lines = log.read_text().splitlines()
        lines[1] = lines[1].replace('"status": 403', '"status": 200')  # someone hides a refusal
        log.write_text("\n".join(lines) + "\n")
        page.goto(server.url + "/console#audit")
        page.get_by_label("API token").fill(admin)
        page.get_by_role("button", name="Sign in").click()
        chain = page.locator("#card-chain")
        chain.get_by_text("broken").wait_for()
        assert "audit.jsonl:2 seq 2: record does not match its MAC (edited" in chain.inner_text()
        screenshot(page, "audit-broken")
