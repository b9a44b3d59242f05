"""The study browser in the cloud console, in headless Chromium against a real cloud API.

Studies reach the API the two ways they do in production: STOW-RS (site `cloud`) and a site's
catalog journal (site `north`, written as a sync agent writes it). A reader of `cloud` signs
in with its token, lands on the browser (not on admin pages), finds a study by typing part of
a patient name, drills down to instance thumbnails, opens the viewer on the study and
downloads it as a ZIP whose members are the bucket's objects byte for byte; an admin uploads a
folder by STOW and sees it listed. No request may fail or answer >= 400 during a test.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset

from shared.keys import instance_key
from shared.store.base import ObjectStore, open_store
from shared.synthetic import StudySpec, iter_study, uid, write_study
from tests.support import studybrowser as sb
from tests.support.cloud import (
    CloudServer,
    cloud_config,
    dataset_bytes,
    make_token,
    running_cloud,
    seed_site,
)
from tests.support.console import chromium, screenshot

SPECS = {
    "smith": StudySpec(patient_id="P100", patient_name="SMITH^JOHN", accession_number="A100",
                       study_date="20240115", series_count=2, instances_per_series=3),
    "smith-many": StudySpec(patient_id="P100", patient_name="SMITH^JOHN", accession_number="A101",
                            study_date="20240301", study_description="CT MANY",
                            instances_per_series=40, rows=32, columns=32),
    "smithers": StudySpec(patient_id="P200", patient_name="SMITHERS^ANNA", accession_number="A200",
                          study_date="20230301", modality="MR", study_description="MR HEAD",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.4"),
    "jones": StudySpec(patient_id="P300", patient_name="JONES^BOB", accession_number="A300",
                       study_date="20220510", modality="US", study_description="US ABDOMEN",
                       sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1"),
}  # fmt: skip
PAGING = 27  # studies of one patient, one instance each: two pages of 25


@dataclass
class World:
    server: CloudServer
    store: ObjectStore
    browser: Any
    tmp: Path
    tokens: dict[str, str]
    studies: dict[str, list[Dataset]] = field(default_factory=dict)

    @property
    def console(self) -> str:
        return self.server.url + "/console"

    def uid(self, name: str) -> str:
        return str(self.studies[name][0].StudyInstanceUID)


def stow(server: CloudServer, token: str, datasets: list[Dataset]) -> requests.Response:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + dataset_bytes(ds)
        + b"\r\n"
        for ds in datasets
    )
    body += f"--{boundary}--\r\n".encode()
    r = requests.post(
        server.dicomweb + "/studies",
        data=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("browser-cloud")
    cfg = cloud_config(tmp)
    store = open_store(cfg.store_url)
    tokens = {
        "admin": make_token(cfg, "root", "admin", []),
        "reader": make_token(cfg, "rad", "reader", ["cloud"]),
    }
    # another site's patient whose name also starts with SMI: the reader must not see it
    seed_site(
        store, "north", StudySpec(patient_id="N1", patient_name="SMITH^NORTH", study_uid=uid())
    )
    studies = {k: list(iter_study(replace(s, study_uid=uid()))) for k, s in SPECS.items()}
    paging = [
        next(iter_study(StudySpec(patient_id="P900", patient_name="PAGING^TEST", study_uid=uid(),
                                  accession_number=f"PG{i:02}", study_date="20200101",
                                  instances_per_series=1)))
        for i in range(PAGING)
    ]  # fmt: skip
    with running_cloud(cfg, store) as server:
        server.poll()
        for datasets in [*studies.values(), paging]:
            stow(server, tokens["admin"], datasets)
        with chromium() as browser:
            yield World(server, store, browser, tmp, tokens, studies)


@pytest.fixture
def page(world: World) -> Iterator[Any]:
    ctx = world.browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        yield pg
    finally:
        ctx.close()
    assert not [e for e in errors if "Content Security Policy" in e]


def sign_in(page: Any, world: World, role: str) -> sb.Watch:
    watch = sb.Watch(page)
    page.goto(world.console + "#browser")
    page.get_by_label("API token").fill(world.tokens[role])
    page.get_by_role("button", name="Sign in").click()
    page.locator("#browser-search").wait_for()
    return watch


def stored(world: World, datasets: list[Dataset]) -> dict[str, bytes]:
    out = {}
    for ds in datasets:
        key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        with world.store.open(key) as fh:
            out[str(ds.SOPInstanceUID)] = fh.read()
    return out


def test_reader_lands_on_the_browser_and_finds_a_study_by_part_of_a_name(
    page: Any, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    watch = sign_in(page, world, "reader")
    assert page.url.endswith("#browser")
    for admin_page in ("Sites", "Restores", "Tokens", "Audit"):
        assert not page.get_by_role("link", name=admin_page).is_visible()
    assert page.locator("#upload").count() == 0  # readers do not write
    sb.search(page, name="smi")
    assert sb.listed_patients(page) == ["SMITH, JOHN", "SMITHERS, ANNA"]  # not SMITH^NORTH
    assert any("PatientName=smi*" in q for q in watch.qido)  # matched by the server
    assert set(sb.listed_studies(page)) == {
        world.uid(k) for k in ("smith", "smith-many", "smithers")
    }
    screenshot(page, "browser-cloud-search")
    # the patient level: all studies of one patient, by ID
    page.locator('tr.patient[data-patient-id="P100"] a.all-studies').click()
    page.wait_for_function("() => document.querySelectorAll('tr.patient').length === 1")
    assert set(sb.listed_studies(page)) == {world.uid("smith"), world.uid("smith-many")}
    assert watch.problems == []
    # no patient name or ID in the logs at INFO, nor in the audit trail (UIDs only)
    audit = world.server.services.audit.path.read_text()
    assert '"action": "qido"' in audit.replace('":"', '": "')
    for text in (caplog.text, audit):
        assert not re.search(r"smi|P100", text, re.IGNORECASE)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"modality": "mr"}, ["smithers"]),
        ({"accession": "A300"}, ["jones"]),
        ({"id": "P100"}, ["smith", "smith-many"]),
        ({"from": "2023-01-01", "to": "2023-12-31"}, ["smithers"]),
        ({"from": "2024-01-01"}, ["smith", "smith-many"]),
        ({"name": "JONES^BOB"}, ["jones"]),
        ({"name": "nobody"}, []),
    ],
)
def test_search_filters(
    page: Any, world: World, fields: dict[str, str], expected: list[str]
) -> None:
    watch = sign_in(page, world, "reader")
    sb.search(page, **fields)
    page.locator("#browser-results table, #browser-empty").first.wait_for()
    assert set(sb.listed_studies(page)) == {world.uid(k) for k in expected}
    if not expected:
        assert page.locator("#browser-empty").inner_text() == "No study matches."
    assert watch.problems == []


def test_results_are_paged_by_the_server(page: Any, world: World) -> None:
    watch = sign_in(page, world, "reader")
    sb.search(page, name="paging")
    page.locator("#browser-pager").wait_for()
    first = sb.listed_studies(page)
    assert len(first) == 25
    assert "limit=26" in watch.qido[-1] and "offset=0" in watch.qido[-1]
    page.get_by_role("button", name="Next").click()
    page.wait_for_url(re.compile(r"offset=25"))
    page.wait_for_function("() => document.querySelectorAll('tr[data-study]').length === 2")
    second = sb.listed_studies(page)
    assert "offset=25" in watch.qido[-1]
    assert not set(first) & set(second)
    assert page.get_by_role("button", name="Next").is_disabled()
    page.get_by_role("button", name="Previous").click()
    page.wait_for_function("() => document.querySelectorAll('tr[data-study]').length === 25")
    assert watch.problems == []


def test_drill_down_to_instance_thumbnails(page: Any, world: World) -> None:
    watch = sign_in(page, world, "reader")
    sb.search(page, name="smith")
    sb.open_study(page, world.uid("smith"))
    assert page.locator("h2.patient-name").inner_text() == "SMITH, JOHN"
    sb.wait_thumbnails(page, "#series-tiles", 2)  # one per series, decoded
    series = world.studies["smith"][0].SeriesInstanceUID
    sb.open_series(page, str(series))
    sb.wait_thumbnails(page, "#instance-tiles", 3)
    assert page.locator("#instance-tiles figure").count() == 3
    screenshot(page, "browser-cloud-series")
    assert watch.problems == []


def test_instance_thumbnails_load_as_they_scroll_into_view(page: Any, world: World) -> None:
    watch = sign_in(page, world, "reader")
    page.set_viewport_size({"width": 900, "height": 600})
    many = world.studies["smith-many"]
    page.goto(
        f"{world.console}#browser?study={many[0].StudyInstanceUID}&series={many[0].SeriesInstanceUID}"
    )
    page.locator("#instance-tiles figure").first.wait_for()
    sb.wait_thumbnails(page, "#instance-tiles", 4)
    assert page.locator("#instance-tiles figure").count() == 40
    before = page.locator("#instance-tiles img.thumb[src]").count()
    assert before < 40  # those below the fold are not asked for yet
    figures = page.locator("#instance-tiles figure")
    figures.last.scroll_into_view_if_needed()
    sb.wait_thumbnails(page, "#instance-tiles figure:last-child", 1)
    assert page.locator("#instance-tiles img.thumb[src]").count() < 40  # the middle: not yet
    for i in range(40):
        figures.nth(i).scroll_into_view_if_needed()
    sb.wait_thumbnails(page, "#instance-tiles", 40)
    assert watch.thumbnails == 40  # each once
    assert 1 <= watch.max_in_flight <= 4  # a few at a time
    assert watch.problems == []


def test_open_in_viewer_opens_that_study(page: Any, world: World) -> None:
    watch = sign_in(page, world, "reader")
    study = world.uid("smith")
    page.goto(f"{world.console}#browser?study={study}")
    page.locator("#series-tiles").wait_for()
    with page.context.expect_page() as info:
        page.locator(".study-toolbar a.viewer").click()
    viewer = info.value
    viewer_watch = sb.Watch(viewer)
    with viewer.expect_response(
        lambda r: f"/dicomweb/studies/{study}/series" in r.url and r.status == 200, timeout=40_000
    ):
        viewer.wait_for_url(re.compile(rf"/viewer/viewer\?StudyInstanceUIDs={re.escape(study)}$"))
    viewer.locator("canvas.cornerstone-canvas").first.wait_for(timeout=40_000)
    assert watch.problems == [] and viewer_watch.problems == []


def test_download_a_study_as_zip(page: Any, world: World, tmp_path: Path) -> None:
    watch = sign_in(page, world, "reader")
    study = world.uid("smith")
    page.goto(f"{world.console}#browser?study={study}")
    link = page.locator(".study-toolbar a", has_text="Download")
    path = sb.download(page, link, tmp_path)
    assert path.name == f"{study}.zip"  # the UID, never the patient's name
    assert sb.zip_members(path) == stored(world, world.studies["smith"])
    assert watch.problems == []


def test_zip_retrieve_over_http(world: World) -> None:
    study = world.studies["smith"]
    url = f"{world.server.dicomweb}/studies/{study[0].StudyInstanceUID}"
    auth = {"Authorization": f"Bearer {world.tokens['reader']}"}
    r = requests.get(url, headers={**auth, "Accept": "application/zip"}, timeout=60, stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/zip"
    assert (
        r.headers["Content-Disposition"]
        == f'attachment; filename="{study[0].StudyInstanceUID}.zip"'
    )
    path = world.tmp / "http.zip"
    path.write_bytes(r.content)
    assert sb.zip_members(path) == stored(world, study)
    # one series
    series = study[0].SeriesInstanceUID
    r = requests.get(f"{url}/series/{series}?accept=application/zip", headers=auth, timeout=60)
    path.write_bytes(r.content)
    assert set(sb.zip_members(path)) == {
        str(d.SOPInstanceUID) for d in study if d.SeriesInstanceUID == series
    }
    # the stored bytes only; multipart stays the default; scope applies
    zts = 'application/zip; transfer-syntax="1.2.840.10008.1.2"'
    assert requests.get(url, headers={**auth, "Accept": zts}, timeout=30).status_code == 406
    both = "multipart/related; type=application/dicom, application/zip; q=0.5"
    r = requests.get(url, headers={**auth, "Accept": both}, timeout=30)
    assert r.headers["Content-Type"].startswith("multipart/related")
    north = requests.get(
        f"{world.server.dicomweb}/studies?PatientName=SMITH^NORTH",
        headers={"Authorization": f"Bearer {world.tokens['admin']}"},
        timeout=30,
    ).json()
    north_uid = north[0]["0020000D"]["Value"][0]
    other = f"{world.server.dicomweb}/studies/{north_uid}?accept=application/zip"
    assert requests.get(other, headers=auth, timeout=30).status_code == 404


def test_admin_uploads_a_folder_and_sees_it_listed(page: Any, world: World) -> None:
    watch = sign_in(page, world, "admin")
    spec = StudySpec(patient_id="P500", patient_name="UPLOAD^FOLDER", accession_number="U500",
                     series_count=2, instances_per_series=3, study_uid=uid())  # fmt: skip
    folder = world.tmp / "upload-folder"
    files = write_study(spec, folder / "nested")
    # a file whose UID exists with other bytes: refused with its reason (0x0111)
    clash = world.studies["jones"][0].copy()
    clash.StudyDescription = "CHANGED"
    clash_path = folder / "clash.dcm"
    clash_path.write_bytes(dataset_bytes(clash))
    page.locator("#upload-folder").set_input_files(folder)
    status = sb.upload_done(page)
    assert status == f"{len(files)} of {len(files) + 1} files stored, 1 not stored."
    rows = sb.report_rows(page)
    assert rows.pop("upload-folder/clash.dcm").startswith("a different object with this UID exists")
    assert rows == {
        f"upload-folder/nested/{f.relative_to(folder / 'nested')}": "stored" for f in files
    }
    screenshot(page, "browser-cloud-upload")
    sb.search(page, name="upload")
    assert sb.listed_patients(page) == ["UPLOAD, FOLDER"]
    uploaded = [pydicom.dcmread(f) for f in files]
    assert sb.listed_studies(page) == [spec.study_uid]
    assert stored(world, uploaded) == {
        str(d.SOPInstanceUID): f.read_bytes() for d, f in zip(uploaded, files, strict=True)
    }
    # 202 (some parts failed) is not a failed request
    assert watch.problems == []


def test_upload_by_dropping_files_in_batches(page: Any, world: World) -> None:
    watch = sign_in(page, world, "admin")
    spec = StudySpec(patient_id="P600", patient_name="DROPPED^FILES", study_uid=uid(),
                     instances_per_series=30, rows=16, columns=16)  # fmt: skip
    files = write_study(spec, world.tmp / "dropped")
    sb.drop_files(page, files)
    assert sb.upload_done(page) == "30 of 30 files stored."
    assert len(watch.stow) == 2  # 25 files, then 5
    assert all(t.startswith('multipart/related; type="application/dicom"') for t in watch.stow)
    progress = page.locator("#upload-progress")
    assert progress.evaluate("p => p.value === p.max && p.max > 0")
    sb.search(page, name="dropped")
    assert sb.listed_studies(page) == [spec.study_uid]
    assert watch.problems == []


def test_upload_by_dropping_a_folder(page: Any, world: World) -> None:
    watch = sign_in(page, world, "admin")
    spec = StudySpec(patient_id="P700", patient_name="DROPPED^FOLDER", series_count=2,
                     instances_per_series=3, study_uid=uid())  # fmt: skip
    root = world.tmp / "dropped-folder"
    files = write_study(spec, root / "a" / "b")
    write_study(replace(spec, series_count=1, instances_per_series=1), root / "c")
    sb.drop_folder(page, root, chunk=2)  # several readEntries calls per directory
    assert sb.upload_done(page) == "7 of 7 files stored."
    rows = sb.report_rows(page)
    assert {f"dropped-folder/a/b/{f.name}" for f in files} <= set(rows)
    assert all(r == "stored" for r in rows.values())
    sb.search(page, name="dropped^folder")
    assert sb.listed_studies(page) == [spec.study_uid]
    assert watch.problems == []


def test_reader_may_not_upload(world: World) -> None:
    ds = next(iter_study(StudySpec(study_uid=uid())))
    with pytest.raises(AssertionError, match="may not write"):
        stow(world.server, world.tokens["reader"], [ds])


def test_reader_shares_a_study_from_the_browser(page: Any, world: World) -> None:
    watch = sign_in(page, world, "reader")
    page.goto(f"{world.console}#browser?study={world.uid('jones')}")
    page.get_by_role("button", name="Share link (72 h)").click()
    page.locator("#study-share-url", has_text="/share/").wait_for()
    assert watch.problems == []
