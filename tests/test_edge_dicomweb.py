"""DICOMweb on the edge with a real client (dicomweb-client) and the console token: STOW through
the one Ingestor, QIDO through the C-FIND builder, WADO through the Locator (verified reads,
read-through recall of evicted instances), roles, CSRF and the aggregated audit of reads.

One edge per module (HTTP on a free port, a file:// bucket); the sync agent is the real one,
run in-process when a test needs uploads and eviction.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset

from shared.synthetic import StudySpec, iter_study, uid
from tests.support.cloud import dataset_bytes
from tests.support.dicomweb import dcmcjpeg, study
from tests.support.edgeweb import PASSWORD, EdgeWeb, edge_web_config, running_edge_web
from tests.support.sync import Site

JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
DEST = {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 104, "permissions": ["store"]}


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeWeb]:
    tmp = tmp_path_factory.mktemp("edge-dicomweb")
    data = edge_web_config(tmp, routes=[{"name": "to-archive", "destinations": ["ARCHIVE"]}])
    data["nodes"].append(DEST)
    with running_edge_web(data) as w:
        yield w


def in_study(study_uid: str, n: int = 1, **kw: Any) -> list[Dataset]:
    """A new series of `n` CT instances in an existing study."""
    return list(iter_study(StudySpec(instances_per_series=n, study_uid=study_uid, **kw)))


def client(w: EdgeWeb) -> DICOMwebClient:
    return DICOMwebClient(w.dicomweb, headers=w.token_headers)


def stow_bytes(w: EdgeWeb, blobs: list[bytes], path: str = "/studies") -> requests.Response:
    boundary = "hpacs-test-boundary"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + b + b"\r\n"
        for b in blobs
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    headers = {**w.token_headers, "Content-Type": ctype}
    return requests.post(w.dicomweb + path, data=body, headers=headers, timeout=60)


def parts(r: requests.Response) -> list[bytes]:
    """The bodies of a multipart/related response."""
    ctype = r.headers["Content-Type"]
    boundary = ctype.split("boundary=")[1].split(";")[0].strip('"')
    out = []
    for chunk in r.content.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        out.append(chunk.split(b"\r\n\r\n", 1)[1][:-2])
    return out


def retrieve_raw(w: EdgeWeb, path: str) -> list[bytes]:
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    r = requests.get(w.dicomweb + path, headers={**w.token_headers, "Accept": accept}, timeout=60)
    assert r.status_code == 200, r.text
    return parts(r)


def states(w: EdgeWeb, study_uid: str) -> dict[str, str]:
    rows = w.edge.db.reader().execute(
        "SELECT i.sop_instance_uid, i.state FROM instances i JOIN studies s ON s.id = i.study_id "
        "WHERE s.study_uid = ?",
        (study_uid,),
    )
    return {r[0]: r[1] for r in rows}


def test_dicomweb_client_stores_searches_and_retrieves(web: EdgeWeb, tmp_path: Path) -> None:
    c = client(web)
    ct = study(3, study_description="Thorax Low Dose", patient_name="SMITH^ANNA")
    c.store_instances(ct)
    study_uid = ct[0].StudyInstanceUID
    # a JPEG-lossless instance of another series (DCMTK's encoder)
    base = in_study(study_uid, patient_name="SMITH^ANNA")[0]
    jll = pydicom.dcmread(io.BytesIO(dcmcjpeg(base, JPEG_LOSSLESS, tmp_path)))
    c.store_instances([jll])

    # QIDO: names and descriptions case-insensitively, as OHIF's search boxes type them
    found = c.search_for_studies(search_filters={"PatientName": "smith*"})
    assert study_uid in {s["0020000D"]["Value"][0] for s in found}
    found = c.search_for_studies(search_filters={"StudyDescription": "*thorax*"})
    assert [s["0020000D"]["Value"][0] for s in found] == [study_uid]
    (row,) = found
    assert row["00201208"]["Value"] == [4] and row["00201206"]["Value"] == [2]
    assert row["00081190"]["Value"] == [f"{web.dicomweb}/studies/{study_uid}"]
    assert c.search_for_studies(search_filters={"StudyDescription": "abdomen*"}) == []
    series = c.search_for_series(study_uid)
    assert len(series) == 2
    instances = c.search_for_instances(study_uid, ct[0].SeriesInstanceUID)
    assert [i["00080018"]["Value"][0] for i in instances] == [d.SOPInstanceUID for d in ct]
    assert {i["00080056"]["Value"][0] for i in instances} == {"ONLINE"}

    # WADO: study, series, instance; the bytes read back are the bytes stored
    stored = {d.SOPInstanceUID: dataset_bytes(d) for d in ct}
    got = retrieve_raw(web, f"/studies/{study_uid}/series/{ct[0].SeriesInstanceUID}")
    assert {pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID: b for b in got} == stored
    assert len(c.retrieve_study(study_uid)) == 4
    assert len(c.retrieve_series(study_uid, ct[0].SeriesInstanceUID)) == 3
    one = c.retrieve_instance(study_uid, ct[1].SeriesInstanceUID, ct[1].SOPInstanceUID)
    assert one.SOPInstanceUID == ct[1].SOPInstanceUID
    assert np.array_equal(one.pixel_array, ct[1].pixel_array)

    # metadata with bulk data URIs, then the bulk data and the frames they name
    meta = c.retrieve_study_metadata(study_uid)
    assert {m["00080018"]["Value"][0] for m in meta} == {*stored, jll.SOPInstanceUID}
    m0 = next(m for m in meta if m["00080018"]["Value"][0] == ct[0].SOPInstanceUID)
    assert "BulkDataURI" in m0["7FE00010"]
    (frame,) = c.retrieve_instance_frames(
        study_uid, ct[0].SeriesInstanceUID, ct[0].SOPInstanceUID, frame_numbers=[1]
    )
    assert frame == ct[0].PixelData
    (lossless,) = c.retrieve_instance_frames(
        study_uid,
        jll.SeriesInstanceUID,
        jll.SOPInstanceUID,
        frame_numbers=[1],
        media_types=(("image/jpeg", JPEG_LOSSLESS),),
    )
    assert lossless[:2] == b"\xff\xd8"  # the stored JPEG-lossless frame, not decoded
    png = c.retrieve_instance_rendered(
        study_uid, ct[0].SeriesInstanceUID, ct[0].SOPInstanceUID, media_types=("image/png",)
    )
    assert Image.open(io.BytesIO(png)).size == (ct[0].Columns, ct[0].Rows)


def test_bulk_data_of_a_long_value(web: EdgeWeb) -> None:
    """A top-level value above the bulk threshold is a BulkDataURI the client can follow."""
    (ds,) = study(1)
    ds.add_new(0x00091010, "OB", bytes(range(256)) * 8)  # a private 2 KB value
    ds.add_new(0x00090010, "LO", "HPACS TEST")
    assert stow_bytes(web, [dataset_bytes(ds)]).status_code == 200
    c = client(web)
    meta = c.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    uri = meta["00091010"]["BulkDataURI"]
    assert c.retrieve_bulkdata(uri) == [bytes(range(256)) * 8]


def test_evicted_instances_are_found_and_recalled(web: EdgeWeb) -> None:
    ct = study(4)
    study_uid = ct[0].StudyInstanceUID
    blobs = [dataset_bytes(d) for d in ct]
    assert stow_bytes(web, blobs).status_code == 200
    site = Site(Path(web.data["edge"]["data_dir"]).parent, web.data)
    agent = site.agent()
    try:
        agent.drain()
        agent.evictor.run()
    finally:
        agent.close()
        site.close()
    assert set(states(web, study_uid).values()) == {"evicted"}
    c = client(web)
    # QIDO still finds them (invariant 3), marked NEARLINE
    found = c.search_for_instances(study_uid)
    assert {i["00080056"]["Value"][0] for i in found} == {"NEARLINE"}
    # metadata and WADO read them through from the bucket, bit-identical
    assert len(c.retrieve_study_metadata(study_uid)) == 4
    got = retrieve_raw(web, f"/studies/{study_uid}")
    assert sorted(got) == sorted(blobs)
    assert set(states(web, study_uid).values()) == {"synced"}


def test_stow_goes_through_the_one_ingest_path(web: EdgeWeb) -> None:
    ct = study(2)
    study_uid = ct[0].StudyInstanceUID
    blobs = [dataset_bytes(d) for d in ct]
    r = stow_bytes(web, blobs, f"/studies/{study_uid}")
    assert r.status_code == 200, r.text
    ok = r.json()["00081199"]["Value"]
    assert {x["00081155"]["Value"][0] for x in ok} == {d.SOPInstanceUID for d in ct}
    # routing jobs queued in the ingest transaction, as for C-STORE
    jobs = web.edge.db.reader().execute(
        "SELECT sop_instance_uid, destination FROM route_jobs WHERE study_uid = ?", (study_uid,)
    )
    assert sorted(tuple(j) for j in jobs) == sorted((d.SOPInstanceUID, "ARCHIVE") for d in ct)
    # the same bytes again: an idempotent success; other bytes: refused (policy keep)
    assert stow_bytes(web, blobs[:1]).status_code == 200
    other = ct[0].copy()
    other.PatientName = "OTHER^BYTES"
    r = stow_bytes(web, [dataset_bytes(other)])
    assert r.status_code == 409
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0x0111]
    assert failed["00081155"]["Value"] == [ct[0].SOPInstanceUID]
    # the acceptance rule: a truncated object is refused (0xC000), nothing stored
    (cut,) = study(1)
    r = stow_bytes(web, [dataset_bytes(cut)[:-100]])
    assert r.status_code == 409 and r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [
        0xC000
    ]
    assert states(web, cut.StudyInstanceUID) == {}
    # a part of another study than the URL names: refused, the rest stored
    (stray,) = study(1)
    (fine,) = in_study(study_uid)
    r = stow_bytes(web, [dataset_bytes(stray), dataset_bytes(fine)], f"/studies/{study_uid}")
    assert r.status_code == 202
    assert states(web, stray.StudyInstanceUID) == {}
    assert fine.SOPInstanceUID in states(web, study_uid)


def test_roles_and_csrf(web: EdgeWeb) -> None:
    (ds,) = study(1)
    body_ok = stow_bytes(web, [dataset_bytes(ds)])
    assert body_ok.status_code == 200
    r = requests.get(web.dicomweb + "/studies", timeout=30)
    assert r.status_code == 401 and r.headers["Content-Type"].startswith("application/problem")
    viewer = web.session("viewer")
    assert viewer.get(web.dicomweb + f"/studies/{ds.StudyInstanceUID}/metadata").status_code == 200
    (other,) = study(1)
    part = dataset_bytes(other)
    boundary = "b0"
    body = b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--b0--\r\n"
    ctype = f"multipart/related; type=application/dicom; boundary={boundary}"
    r = viewer.post(web.dicomweb + "/studies", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 403  # a viewer reads; storing is a technician's
    tech = web.session("technician")
    r = tech.post(web.dicomweb + "/studies", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    # the cookie alone from another origin (no Origin header, no Sec-Fetch-Site): refused
    del tech.headers["Origin"]
    r = tech.post(web.dicomweb + "/studies", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 401
    r = tech.post(
        web.dicomweb + "/studies",
        data=body,
        headers={"Content-Type": ctype, "Origin": "https://evil.example"},
    )
    assert r.status_code == 401


def audit_records(w: EdgeWeb) -> list[dict[str, Any]]:
    path = Path(w.data["edge"]["data_dir"]) / "audit" / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def test_reads_are_audited_per_study_and_session(web: EdgeWeb) -> None:
    ct = study(3)
    study_uid = ct[0].StudyInstanceUID
    assert stow_bytes(web, [dataset_bytes(d) for d in ct]).status_code == 200
    viewer = web.session("viewer")
    base = web.dicomweb + f"/studies/{study_uid}"
    assert viewer.get(base + "/metadata").status_code == 200
    for d in ct:
        url = f"{base}/series/{d.SeriesInstanceUID}/instances/{d.SOPInstanceUID}/frames/1"
        assert viewer.get(url).status_code == 200
    assert viewer.get(base + "/series/1.2.3/metadata").status_code == 404
    mine = [r for r in audit_records(web) if r["actor"] == "viewer" and r["study_uid"] == study_uid]
    first, failed = mine[0], mine[1]
    assert (first["action"], first["outcome"], first["role"]) == ("wado-metadata", "ok", "viewer")
    assert failed["outcome"] == "error" and "status=404" in failed["detail"]
    assert len(mine) == 2  # the frames requests are counted, not recorded one by one
    web.http.access.flush(time.time(), everything=True)
    mine = [r for r in audit_records(web) if r["actor"] == "viewer" and r["study_uid"] == study_uid]
    assert mine[-1]["detail"] == "3 more requests: wado-frames=3"
    stow = [r for r in audit_records(web) if r["action"] == "stow" and study_uid in r["study_uid"]]
    assert stow and stow[0]["actor"] == "console-token" and "stored=3" in stow[0]["detail"]
    # no patient data in the trail: the names searched for are not recorded
    requests.get(
        web.dicomweb + "/studies", params={"PatientName": "SECRET^NAME"}, headers=web.token_headers
    )
    assert "SECRET" not in json.dumps(audit_records(web))


def _spec_dataset(**kw: Any) -> Dataset:
    (ds,) = study(1, **kw)
    return ds


def test_qido_pages_newest_first_and_warns(web: EdgeWeb) -> None:
    tag = uid()[-8:]
    for date in ("20200101", "20220101", "20210101"):
        ds = _spec_dataset(study_date=date, accession_number=f"P{tag}")
        assert stow_bytes(web, [dataset_bytes(ds)]).status_code == 200
    url = web.dicomweb + "/studies"
    r = requests.get(
        url, params={"AccessionNumber": f"P{tag}", "limit": "2"}, headers=web.token_headers
    )
    assert [s["00080020"]["Value"][0] for s in r.json()] == ["20220101", "20210101"]
    assert "additional results" in r.headers["Warning"]
    r = requests.get(
        url,
        params={"AccessionNumber": f"P{tag}", "limit": "2", "offset": "2"},
        headers=web.token_headers,
    )
    assert [s["00080020"]["Value"][0] for s in r.json()] == ["20200101"]
    r = requests.get(
        url,
        params={"AccessionNumber": f"P{tag}", "fuzzymatching": "true"},
        headers=web.token_headers,
    )
    assert r.status_code == 200 and "Only literal matching" in r.headers["Warning"]


def test_viewer_page_needs_a_token_or_a_session(web: EdgeWeb) -> None:
    """The OHIF page on the edge: the console token or a session opens it; without either a
    browser goes to the edge's login page (user and password, or the token), then back."""
    page = web.url + "/viewer/viewer?StudyInstanceUIDs=1.2.3"
    r = requests.get(page, allow_redirects=False, timeout=30)
    assert r.status_code == 303
    loc = urlsplit(r.headers["Location"])
    assert loc.path == "/login"
    assert parse_qs(loc.query)["next"] == ["/viewer/viewer?StudyInstanceUIDs=1.2.3"]
    login = requests.get(web.url + r.headers["Location"], timeout=30)
    assert login.status_code == 200 and 'id="user"' in login.text and 'id="token"' in login.text
    r = requests.get(page, headers=web.token_headers, timeout=30)
    assert r.status_code == 200 and "window.PUBLIC_URL" in r.text
    assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    config = requests.get(web.url + "/viewer/app-config.js", timeout=30).text
    assert '"qidoRoot": "/dicomweb"' in config
    # the login form: a viewer user signs in and is sent back where it was going
    s = requests.Session()
    form = {"user": "viewer", "password": PASSWORD, "token": "", "next": "/viewer/viewer?x=1"}
    r = s.post(web.url + "/login", data=form, headers={"Origin": web.url}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["Location"] == "/viewer/viewer?x=1"
    assert s.get(page, timeout=30).status_code == 200
    # `next` only ever leads to this origin
    form["next"] = "//evil.example/x"
    r = requests.post(
        web.url + "/login", data=form, headers={"Origin": web.url}, allow_redirects=False
    )
    assert r.status_code == 303 and r.headers["Location"] == "/viewer/"
    # a cross-site form post does not sign anyone in
    r = requests.post(
        web.url + "/login",
        data=form,
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert r.status_code == 401
