"""The study browser in the edge console, and sending a study to a registered node.

The Browser page for each role; "send to a node" through the JSON API (queued in the routing
queue, delivered by the forwarder to a DCMTK storescp); and the whole flow in Chromium over the
edge's own DICOMweb: find a study by part of a name, thumbnails, the ZIP equal to the cached
files, the viewer, send, a folder upload.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from edge.forwarder import Forwarder, dimse_sender
from edge.http import EdgeHttp
from edge.server import EdgeServer
from edge.users import add_user
from shared.config import ConfigError, parse_config
from shared.registry import REGISTRY, Node, upsert_node
from shared.synthetic import StudySpec, write_study
from tests.support import studybrowser as sb
from tests.support.console import TOKEN, call, new_page, running_http, screenshot, signed_in
from tests.support.dcmtk import run, storescp
from tests.support.edge import edge_config, running_edge
from tests.support.net import free_port, port_open, wait_for

PASSWORD = "a long test password"


@dataclass
class Site:
    edge: EdgeServer
    http: EdgeHttp
    tmp: Path
    received: Path  # what the ARCHIVE storescp wrote

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}/"

    def store(self, spec: StudySpec) -> list[Path]:
        files = write_study(spec, self.tmp / f"in-{spec.accession_number}")
        port = self.edge.ports[0]
        r = run("storescu", "-aet", "STORESCU", "-aec", "HPACS", "127.0.0.1", port, *files)
        assert r.returncode == 0, r.stderr
        return files

    def session(self, user: str) -> requests.Session:
        return signed_in(self.http, user, PASSWORD)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    scp_port = free_port()
    # +uf: a file per receipt, so a study sent twice arrives twice
    scp = storescp(scp_port, tmp_path / "archive", "ARCHIVE", "+uf")
    try:
        wait_for(lambda: port_open(scp_port), 10, "storescp up")
        with running_edge(edge_config(tmp_path, http_port=free_port())) as edge:
            with edge.db.write() as conn:
                for role in ("admin", "technician", "viewer"):
                    add_user(conn, f"{role}1", role, PASSWORD)
                upsert_node(conn, Node("ARCHIVE", "127.0.0.1", scp_port, source=REGISTRY))
            send = dimse_sender("HPACS", edge.db, edge.cache, timeout_s=10)
            forwarder = Forwarder(edge.db, edge.cfg, send, poll_interval_s=0.1)
            forwarder.start()
            try:
                with running_http(edge) as http:
                    yield Site(edge, http, tmp_path, tmp_path / "archive")
            finally:
                forwarder.stop()
    finally:
        scp.terminate()
        try:
            scp.wait(10)
        except subprocess.TimeoutExpired:
            scp.kill()
            scp.wait()


def received_uids(folder: Path) -> list[str]:
    return sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.rglob("*") if p.is_file())


def test_send_a_study_to_a_node_through_the_routing_queue(site: Site) -> None:
    files = site.store(StudySpec(series_count=2, instances_per_series=2, accession_number="S1"))
    uids = sorted(str(pydicom.dcmread(f).SOPInstanceUID) for f in files)
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    tech = site.session("technician1")
    url = f"{site.url}api/studies/{study}/send"
    r = tech.post(url, json={"destination": "ARCHIVE"}, timeout=30)
    assert r.status_code == 202, r.text
    assert (r.json()["queued"], r.json()["instances"]) == (4, 4)

    def sent() -> int:
        return int(tech.get(url, timeout=30).json()["destinations"]["ARCHIVE"]["sent"])

    wait_for(lambda: sent() == 4, 30, "the study delivered")
    assert received_uids(site.received) == uids
    progress = tech.get(url, timeout=30).json()
    assert progress["route"] == "manual"
    assert progress["destinations"]["ARCHIVE"] == {
        "pending": 0, "sending": 0, "sent": 4, "dead": 0, "error": ""
    }  # fmt: skip
    # the routing page shows it like any route
    queue = tech.get(f"{site.url}api/routes", timeout=30).json()
    assert [(q["route"], q["destination"], q["state"], q["jobs"]) for q in queue["summary"]] == [
        ("manual", "ARCHIVE", "sent", 4)
    ]
    # again: sent again (the earlier sent rows give way)
    assert tech.post(url, json={"destination": "ARCHIVE"}, timeout=30).json()["queued"] == 4
    wait_for(lambda: len(received_uids(site.received)) == 8, 30, "the study delivered twice")
    assert received_uids(site.received) == sorted(uids * 2)
    audit = [e for e in site.http.audit.recent() if e["action"] == "study-send"]
    assert [(e["actor"], e["target"], e["study_uid"], e["outcome"]) for e in audit] == [
        ("technician1", "ARCHIVE", study, "ok")
    ] * 2


def test_send_refusals(site: Site) -> None:
    files = site.store(StudySpec(instances_per_series=1, accession_number="S2"))
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    url = f"{site.url}api/studies/{study}/send"
    viewer = site.session("viewer1")
    assert viewer.post(url, json={"destination": "ARCHIVE"}, timeout=30).status_code == 403
    assert viewer.get(url, timeout=30).status_code == 403
    admin = site.session("admin1")
    r = admin.post(url, json={"destination": "NOWHERE"}, timeout=30)
    assert (r.status_code, r.json()["field"]) == (400, "destination")
    r = admin.post(url, json={}, timeout=30)
    assert (r.status_code, r.json()["field"]) == (400, "destination")
    missing = f"{site.url}api/studies/1.2.3.4.5/send"
    assert admin.post(missing, json={"destination": "ARCHIVE"}, timeout=30).status_code == 404
    bad = f"{site.url}api/studies/not-a-uid/send"
    r = admin.post(bad, json={"destination": "ARCHIVE"}, timeout=30)
    assert (r.status_code, r.json()["field"]) == (400, "study_uid")
    # a deleted study is not sent (the instances a C-MOVE would send: none)
    deleted = site.store(StudySpec(instances_per_series=1, accession_number="S3"))
    gone = str(pydicom.dcmread(deleted[0]).StudyInstanceUID)
    r = admin.post(f"{site.url}api/studies/{gone}/delete", json={"reason": "test"}, timeout=30)
    assert r.status_code == 200, r.text
    r = admin.post(
        f"{site.url}api/studies/{gone}/send", json={"destination": "ARCHIVE"}, timeout=30
    )
    assert r.status_code == 404
    # the console token (machines) may send too; nothing was queued by the refusals
    status, _, body = call(site.http, f"/api/studies/{study}/send", token=TOKEN)
    assert status == 200 and b'"destinations": {}' in body
    errors = [e for e in site.http.audit.recent() if e["action"] == "study-send"]
    assert {e["outcome"] for e in errors} == {"error"}


def test_the_manual_route_name_is_reserved(site: Site) -> None:
    base = edge_config(site.tmp)
    route = {"name": "manual", "destinations": ["STORESCU"]}
    with pytest.raises(ConfigError, match="reserved"):
        parse_config({**base, "routes": [route]})
    admin = site.session("admin1")
    r = admin.post(f"{site.url}api/routes/rules", json=route, timeout=30)
    assert (r.status_code, r.json()["field"]) == (400, "name")


# ---- in the browser ---------------------------------------------------------------------------


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with new_page(browser, height=900, timeout_ms=20_000, accept_downloads=True) as pg:
        yield pg


def sign_in(page: Any, site: Site, user: str) -> sb.Watch:
    """Signed in; the requests watched from then on (before, the console's "who am I" is
    rightly refused: nobody is signed in yet)."""
    page.goto(site.url)
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#whoami").get_by_text(user).wait_for()
    return sb.Watch(page)


def test_browser_page_for_each_role(page: Any, site: Site) -> None:
    sign_in(page, site, "viewer1")
    page.locator("#browser-search").wait_for()  # a viewer's landing page
    assert page.locator("#nav a:visible").all_inner_texts() == ["Browser", "Studies"]
    assert page.locator("#upload").count() == 0
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, site, "technician1")
    page.get_by_role("link", name="Browser").click()
    page.locator("#upload-drop").wait_for()  # technicians upload
    screenshot(page, "browser-edge-technician")


def test_find_drill_download_upload_and_send_on_the_edge(
    page: Any, site: Site, tmp_path: Path
) -> None:
    spec = StudySpec(patient_id="E100", patient_name="SMITH^EDGE", accession_number="E1",
                     series_count=2, instances_per_series=2)  # fmt: skip
    files = site.store(spec)
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    watch = sign_in(page, site, "technician1")
    page.get_by_role("link", name="Browser").click()
    sb.search(page, name="smi")
    assert sb.listed_patients(page) == ["SMITH, EDGE"]
    sb.open_study(page, study)
    sb.wait_thumbnails(page, "#series-tiles", 2)
    # download: the cached files, byte for byte
    path = sb.download(page, page.locator(".study-toolbar a", has_text="Download"), tmp_path)
    cached = {
        r["sop_instance_uid"]: site.edge.cache.path(r["path"]).read_bytes()
        for r in site.edge.db.reader().execute("SELECT sop_instance_uid, path FROM instances")
    }
    assert sb.zip_members(path) == cached
    # the viewer opens on that study (the edge's own /viewer/, same origin, same session)
    with page.context.expect_page() as info:
        page.locator(".study-toolbar a.viewer").click()
    viewer = info.value
    viewer.wait_for_url(f"{site.url}viewer/viewer?StudyInstanceUIDs={study}")
    viewer.locator("canvas.cornerstone-canvas").first.wait_for(timeout=40_000)
    viewer.close()
    # send to the node from the study page
    page.locator("#send-node").select_option("ARCHIVE")
    page.locator("#send-button").click()
    page.locator("#send-status", has_text="4 sent · 0 waiting").wait_for(timeout=30_000)
    assert len(received_uids(site.received)) == 4
    # a series, its instance thumbnails
    series = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    sb.open_series(page, series)
    sb.wait_thumbnails(page, "#instance-tiles", 2)
    # upload a folder
    page.goto(site.url + "#browser")
    folder = tmp_path / "up"
    up = write_study(StudySpec(patient_id="E200", patient_name="UPLOAD^EDGE"), folder)
    page.locator("#upload-folder").set_input_files(folder)
    assert sb.upload_done(page) == f"{len(up)} of {len(up)} files stored."
    sb.search(page, name="upload")
    assert sb.listed_patients(page) == ["UPLOAD, EDGE"]
    assert watch.problems == []
