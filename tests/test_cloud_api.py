"""The cloud API against real clients: dicomweb-client and requests over a real port.

One server per module and catalog backend (SQLite, PostgreSQL) over a file:// bucket seeded the
way the sync agent journals instances: site `a` (two studies), site `b` (one study).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from cloud_api import ops
from cloud_api.app import PUBLIC, ROUTES
from cloud_api.catalog import STUDY, Search
from shared.store.base import ObjectStore, open_store
from shared.synthetic import StudySpec, iter_study
from tests.support.cloud import (
    CloudServer,
    cloud_config,
    dataset_bytes,
    make_token,
    running_cloud,
    seed_site,
)
from tests.support.net import wait_for

VIEWER = "https://viewer.example"


@dataclass
class World:
    server: CloudServer
    store: ObjectStore
    tokens: dict[str, str]
    data: dict[str, dict[str, bytes]]  # site -> {sop uid: bytes}
    studies: dict[str, str]  # label -> study uid


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, module_catalog_url: str) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("cloud")
    cfg = cloud_config(
        tmp,
        query_max_results=50,
        max_body_bytes=2_000_000,
        cors_origins=[VIEWER],
        catalog=module_catalog_url,
        denied_burst=100_000,  # the route walk sends ~100 refused requests (limit: elsewhere)
    )
    store = open_store(cfg.store_url)
    s1 = StudySpec(
        patient_id="PA1",
        patient_name="DOE^JANE",
        study_date="20240110",
        series_count=2,
        instances_per_series=3,
        study_uid="1.2.826.0.1.3680043.10.1255.901",
    )
    s2 = StudySpec(
        patient_id="PA2",
        patient_name="SMITH^JOHN",
        study_date="20240320",
        modality="MR",
        accession_number="ACC2",
        instances_per_series=2,
        study_uid="1.2.826.0.1.3680043.10.1255.902",
    )
    s3 = StudySpec(
        patient_id="PB1",
        patient_name="DOE^BOB",
        study_date="20240115",
        instances_per_series=2,
        study_uid="1.2.826.0.1.3680043.10.1255.903",
    )
    data = {"a": {}, "b": {}}
    data["a"].update(seed_site(store, "a", s1, batch=4))
    data["a"].update(seed_site(store, "a", s2))
    data["b"].update(seed_site(store, "b", s3))
    tokens = {
        "admin": make_token(cfg, "root", "admin", []),
        "reader_a": make_token(cfg, "rad-a", "reader", ["a"]),
        "reader_b": make_token(cfg, "rad-b", "reader", ["b"]),
        "reader_cloud": make_token(cfg, "rad-cloud", "reader", ["cloud", "a"]),
        "agent_cloud": make_token(cfg, "uploader", "agent", ["cloud"]),
    }
    with running_cloud(cfg, store) as server:
        yield World(
            server,
            store,
            tokens,
            data,
            {"s1": s1.study_uid, "s2": s2.study_uid, "s3": s3.study_uid},
        )


def client(w: World, who: str) -> DICOMwebClient:
    return DICOMwebClient(w.server.dicomweb, headers={"Authorization": f"Bearer {w.tokens[who]}"})


def get(w: World, path: str, who: str | None = None, **kw: object) -> requests.Response:
    headers = dict(kw.pop("headers", {}) or {})  # type: ignore[call-overload]
    if who:
        headers["Authorization"] = f"Bearer {w.tokens[who]}"
    return requests.get(w.server.url + path, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


def value(ds: dict, tag: str) -> object:
    return ds[tag].get("Value", [None])[0]


def split_multipart(resp: requests.Response) -> list[bytes]:
    boundary = re.search(r"boundary=([^;]+)", resp.headers["Content-Type"]).group(1).strip('"')
    parts = resp.content.split(b"--" + boundary.encode())[1:-1]
    out = []
    for p in parts:
        body = p.split(b"\r\n\r\n", 1)[1]
        out.append(body[:-2] if body.endswith(b"\r\n") else body)
    return out


# ---- QIDO-RS -------------------------------------------------------------------------------------


def test_qido_studies_scoped_to_the_readers_site(world: World) -> None:
    found = client(world, "reader_a").search_for_studies()
    assert {value(s, "0020000D") for s in found} == {world.studies["s1"], world.studies["s2"]}
    s1 = next(s for s in found if value(s, "0020000D") == world.studies["s1"])
    assert value(s1, "00201208") == 6 and value(s1, "00201206") == 2
    assert s1["00080061"]["Value"] == ["CT"]
    assert value(s1, "00081190").endswith(f"/dicomweb/studies/{world.studies['s1']}")
    assert {value(s, "0020000D") for s in client(world, "admin").search_for_studies()} == set(
        world.studies.values()
    ) | _cloud_studies(world)


def _cloud_studies(world: World) -> set[str]:
    rows = world.server.services.catalog.search(Search(STUDY, limit=1000, sites=["cloud"]))
    return {r["StudyInstanceUID"] for r in rows}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"PatientID": "PA1"}, {"s1"}),
        ({"00100020": "PA2"}, {"s2"}),
        ({"PatientName": "doe*"}, {"s1"}),  # names match case-insensitively
        ({"PatientName": "*J?HN"}, {"s2"}),
        ({"StudyDate": "20240101-20240131"}, {"s1"}),
        ({"StudyDate": "20240201-"}, {"s2"}),
        ({"ModalitiesInStudy": "MR"}, {"s2"}),
        ({"AccessionNumber": "ACC2"}, {"s2"}),
        (
            {"StudyInstanceUID": "1.2.826.0.1.3680043.10.1255.901,1.2.826.0.1.3680043.10.1255.903"},
            {"s1"},
        ),
        ({"PatientID": "PB1"}, set()),  # site b's patient: invisible to a reader of site a
        ({"PatientID": "P[A]1"}, set()),  # GLOB metacharacters are literal
    ],
)
def test_qido_matching(world: World, filters: dict[str, str], expected: set[str]) -> None:
    found = client(world, "reader_a").search_for_studies(
        search_filters=filters, fuzzymatching=False
    )
    assert {value(s, "0020000D") for s in found} == {world.studies[k] for k in expected}


def test_qido_series_and_instances(world: World) -> None:
    c = client(world, "reader_a")
    series = c.search_for_series(world.studies["s1"])
    assert len(series) == 2 and all(value(s, "00201209") == 3 for s in series)
    insts = c.search_for_instances(world.studies["s1"], value(series[0], "0020000E"))
    assert len(insts) == 3
    assert [value(i, "00200013") for i in insts] == [1, 2, 3]
    assert len(c.search_for_series(search_filters={"Modality": "MR"})) == 1
    assert len(c.search_for_instances(search_filters={"PatientID": "PA1"})) == 6


def test_qido_limit_offset_includefield_and_204(world: World) -> None:
    c = client(world, "reader_a")
    page1 = c.search_for_studies(limit=1, offset=0, fields=["StudyDescription", "00080060"])
    page2 = c.search_for_studies(limit=1, offset=1)
    assert len(page1) == len(page2) == 1 and page1[0] != page2[0]
    r = get(world, "/dicomweb/studies?PatientID=NOBODY", "reader_a")
    assert r.status_code == 204
    r = get(world, "/dicomweb/studies?NotAnAttribute=1", "reader_a")
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/problem+json")


def test_qido_fuzzymatching_is_literal_with_a_warning(world: World) -> None:
    """PS3.18: a server without fuzzy matching matches literally and says so (OHIF sends it)."""
    r = get(world, "/dicomweb/studies?fuzzymatching=true&PatientName=DOE^J", "reader_a")
    assert r.status_code == 204 and r.headers["Warning"].startswith("299 ")
    assert "fuzzymatching" in r.headers["Warning"]
    r = get(world, "/dicomweb/studies?fuzzymatching=true&PatientName=DOE^JANE", "reader_a")
    assert r.status_code == 200 and [value(s, "0020000D") for s in r.json()] == [
        world.studies["s1"]
    ]
    assert "fuzzymatching" in r.headers["Warning"]
    assert "Warning" not in get(world, "/dicomweb/studies?fuzzymatching=false", "reader_a").headers


@pytest.mark.parametrize(
    "query",
    [
        "offset=99999999999999999999",
        "limit=99999999999999999999",
        "offset=-1",
        "offset=1e3",
        "limit=%E2%91%A0",  # a Unicode digit
        "SeriesNumber=99999999999999999999",
        "StudyDate=1' OR 1=1",
    ],
)
def test_qido_bad_numbers_are_400(world: World, query: str) -> None:
    level = "series" if "Series" in query else "studies"
    r = get(world, f"/dicomweb/{level}?{query}", "reader_a")
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"StudyDescription": "ct chest"}, {"s1", "s2"}),  # OHIF's description box
        ({"StudyDescription": "*chest*"}, {"s1", "s2"}),
        ({"ReferringPhysicianName": "ref^doc"}, {"s1", "s2"}),
        ({"StudyDescription": "CT CHESTX"}, set()),
    ],
)
def test_qido_text_matching_is_case_insensitive(
    world: World, filters: dict[str, str], expected: set[str]
) -> None:
    found = client(world, "reader_a").search_for_studies(search_filters=filters)
    assert {value(s, "0020000D") for s in found} == {world.studies[k] for k in expected}
    series = client(world, "reader_a").search_for_series(
        search_filters={"SeriesDescription": "ct chest series 1"}
    )
    assert {value(s, "0020000D") for s in series} == {world.studies["s1"], world.studies["s2"]}


def test_qido_result_limit_warns(world: World) -> None:
    r = get(world, "/dicomweb/instances?limit=1000", "admin")  # over query_max_results=50? no
    assert r.status_code == 200
    r = get(world, "/dicomweb/instances?limit=2", "admin")
    assert len(r.json()) == 2 and "additional results" in r.headers.get("Warning", "")


# ---- WADO-RS -------------------------------------------------------------------------------------


def test_wado_study_series_instance_bit_identical(world: World) -> None:
    c = client(world, "reader_a")
    study = world.studies["s1"]
    got = c.retrieve_study(study)
    assert {d.SOPInstanceUID for d in got} == {
        u
        for u, b in world.data["a"].items()
        if pydicom.dcmread(io.BytesIO(b)).StudyInstanceUID == study
    }
    r = get(
        world,
        f"/dicomweb/studies/{study}",
        "reader_a",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert r.status_code == 200
    parts = split_multipart(r)
    assert len(parts) == 6
    assert all(world.data["a"][pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID] == p for p in parts)
    first = got[0]
    series = c.retrieve_series(study, first.SeriesInstanceUID)
    assert len(series) == 3
    inst = c.retrieve_instance(study, first.SeriesInstanceUID, first.SOPInstanceUID)
    assert inst.SOPInstanceUID == first.SOPInstanceUID


def test_wado_metadata_frames_rendered(world: World) -> None:
    c = client(world, "reader_a")
    study = world.studies["s2"]
    meta = c.retrieve_study_metadata(study)
    assert len(meta) == 2
    m = meta[0]
    assert value(m, "00100020") == "PA2"
    assert "BulkDataURI" in m["7FE00010"]
    se, sop = value(m, "0020000E"), value(m, "00080018")
    assert len(c.retrieve_series_metadata(study, se)) == 2
    assert value(c.retrieve_instance_metadata(study, se, sop), "00080018") == sop
    frames = c.retrieve_instance_frames(study, se, sop, frame_numbers=[1])
    ds = pydicom.dcmread(io.BytesIO(world.data["a"][sop]))
    assert frames[0] == ds.PixelData
    jpeg = c.retrieve_instance_rendered(study, se, sop, media_types=("image/jpeg",))
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.size == (ds.Columns, ds.Rows)
    png = get(
        world,
        f"/dicomweb/studies/{study}/series/{se}/instances/{sop}/rendered",
        "reader_a",
        params={"window": "100,200,linear"},
        headers={"Accept": "image/png"},
    )
    assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
    thumb = get(
        world,
        f"/dicomweb/studies/{study}/series/{se}/instances/{sop}/thumbnail",
        "reader_a",
        params={"viewport": "16,16"},
    )
    assert Image.open(io.BytesIO(thumb.content)).size == (16, 16)
    for path in (f"/dicomweb/studies/{study}", f"/dicomweb/studies/{study}/series/{se}"):
        thumb = get(world, path + "/thumbnail", "reader_a", headers={"Accept": "image/png"})
        assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "PNG"


# ---- STOW-RS -------------------------------------------------------------------------------------


def test_stow_stores_catalogs_and_reports_failures(world: World) -> None:
    spec = StudySpec(
        patient_id="PC1", instances_per_series=2, study_uid="1.2.826.0.1.3680043.10.1255.904"
    )
    datasets = list(iter_study(spec))
    client(world, "agent_cloud").store_instances(datasets)
    # cataloged under site `cloud` like an edge upload, visible at once and after a rebuild
    found = client(world, "reader_cloud").search_for_studies(search_filters={"PatientID": "PC1"})
    assert [value(s, "0020000D") for s in found] == [spec.study_uid]
    keys = [i.key for i in world.store.list("catalog/cloud/")]
    assert keys, "STOW wrote no catalog object"
    got = client(world, "reader_cloud").retrieve_study(spec.study_uid)
    assert {d.SOPInstanceUID for d in got} == {d.SOPInstanceUID for d in datasets}
    # the same bytes again: idempotent success
    client(world, "agent_cloud").store_instances(datasets[:1])
    # different bytes under an existing UID, and a part that is not DICOM: per-instance failures
    # (to a token that may read every site; an agent learns nothing: test_cloud_stow_oracle.py)
    changed = datasets[1].copy()
    changed.PatientName = "OTHER^NAME"
    body, ctype = _multipart([dataset_bytes(changed), b"not dicom at all"])
    r = requests.post(
        world.server.dicomweb + "/studies",
        data=body,
        timeout=30,
        headers={"Content-Type": ctype, "Authorization": f"Bearer {world.tokens['admin']}"},
    )
    assert r.status_code == 409
    failed = r.json()["00081198"]["Value"]
    assert sorted(value(f, "00081197") for f in failed) == [0x0111, 0xC000]
    # wrong study in the URL: that instance fails, the request answers 409 (nothing stored)
    body, ctype = _multipart([dataset_bytes(datasets[0])])
    r = requests.post(
        world.server.dicomweb + "/studies/1.2.3",
        data=body,
        timeout=30,
        headers={"Content-Type": ctype, "Authorization": f"Bearer {world.tokens['agent_cloud']}"},
    )
    assert r.status_code == 409 and value(r.json()["00081198"]["Value"][0], "00081197") == 0xA900


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    b = "testboundary"
    body = (
        b"".join(
            f"--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
            for p in parts
        )
        + f"--{b}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={b}'


def test_stow_body_limit_is_413(world: World) -> None:
    body, ctype = _multipart([b"x" * 2_100_000])
    r = requests.post(
        world.server.dicomweb + "/studies",
        data=body,
        timeout=30,
        headers={"Content-Type": ctype, "Authorization": f"Bearer {world.tokens['agent_cloud']}"},
    )
    assert r.status_code == 413 and r.json()["title"] == "PayloadTooLarge"


def test_agents_may_not_read_patient_data(world: World) -> None:
    r = get(world, "/dicomweb/studies", "agent_cloud")
    assert r.status_code == 403


def test_readers_may_not_store(world: World) -> None:
    body, ctype = _multipart([dataset_bytes(next(iter_study(StudySpec())))])
    r = requests.post(
        world.server.dicomweb + "/studies",
        data=body,
        timeout=30,
        headers={"Content-Type": ctype, "Authorization": f"Bearer {world.tokens['reader_cloud']}"},
    )
    assert r.status_code == 403


# ---- auth and audit ------------------------------------------------------------------------------


def _fill(path: str, w: World) -> str:
    uids = {
        "study": w.studies["s1"],
        "series": "1.2.3",
        "instance": "1.2.3.4",
        "frames": "1",
        "tag": "7FE00010",
        "site": "a",
        "restore_id": "x1",
        "deletion_id": "x1",
        "share_id": "0123456789abcdef",
        "name": "nosuch",
    }
    return re.sub(r"\{(\w+)\}", lambda m: uids[m.group(1)], path)


# Public on purpose, each with its reason. A route added to this set must hold no data.
CONSOLE_SHELL = {
    # the cloud console's static HTML/JS/CSS (cloud_api/admin_api.py): a browser cannot send a
    # bearer token when it navigates; the shell shows nothing until its /api calls, which carry
    # the token, succeed; "/" only redirects there
    "/",
    "/console",
    "/console/assets",
    "/console/shared/{name}",
}
# The viewer's static shell and the ways in (cloud_api/session.py, shared/web/viewer.py): the
# OHIF build and its generated config hold no data (the page itself redirects to the login
# page without a credential); the login page is a form, its post and sign-out only set or
# clear a cookie (each audited); a share link authenticates itself by its secret (audited).
VIEWER_SHELL = {
    "/viewer",
    "/viewer/app-config.js",
    "/viewer/{tail}",
    "/login",
    "/logout",
    "/share/{token}",
}


def test_every_route_requires_a_token(world: World) -> None:
    """Walks the live route table: a route reachable without a token fails this test."""
    assert world.server.app is not None
    public = CONSOLE_SHELL | VIEWER_SHELL
    assert {r.canonical for r in world.server.app[PUBLIC]} == public
    routes = [
        r
        for r in world.server.app.router.routes()
        if r.resource.canonical not in ops.OPEN_PATHS  # kubelet probes (cloud_api/ops.py)
        and r.resource.canonical not in public
    ]
    assert len(routes) == len(ROUTES) + 1  # + /metrics, admin only
    for route in routes:
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        url = world.server.url + _fill(path, world)
        for headers in ({}, {"Authorization": "Bearer hpacs_wrong"}, {"Authorization": "Basic x"}):
            r = requests.request(route.method, url, headers=headers, timeout=30)
            assert r.status_code == 401, (route.method, path, r.status_code)
            assert r.headers["Content-Type"].startswith("application/problem+json")
    r = requests.get(world.server.url + "/nowhere", timeout=30)
    assert r.status_code == 401


def test_other_sites_reader_is_refused_and_audited(world: World) -> None:
    study = world.studies["s1"]  # site a
    audit = world.server.services.audit
    before = audit.seq
    assert get(world, f"/dicomweb/studies/{study}", "reader_b").status_code == 404
    assert get(world, f"/dicomweb/studies/{study}/metadata", "reader_b").status_code == 404
    assert get(world, f"/dicomweb/studies?StudyInstanceUID={study}", "reader_b").status_code == 204
    assert get(world, "/api/sites", "reader_b").status_code == 403
    assert get(world, f"/dicomweb/studies/{study}").status_code == 401
    recs = [json.loads(line) for line in audit.path.read_text().splitlines()][before:]
    assert [(r["token"], r["outcome"], r["status"]) for r in recs] == [
        ("rad-b", "error", 404),
        ("rad-b", "error", 404),
        ("rad-b", "ok", 204),
        ("rad-b", "denied", 403),
    ]  # the refusal without a token is counted in its client's window (test_cloud_denials.py)
    assert all(r["study_uid"] == study for r in recs[:2])
    assert all(r["client"] == "127.0.0.1" for r in recs)
    assert "PA1" not in audit.path.read_text() and "DOE" not in audit.path.read_text()


# ---- restore API ---------------------------------------------------------------------------------


def test_restore_request_and_status(world: World) -> None:
    from shared.keys import restore_key, restore_status_key
    from shared.restore import RestorePhase, RestoreRequest, RestoreStatus

    url = world.server.url + "/api/sites/a/restores"
    auth = {"Authorization": f"Bearer {world.tokens['admin']}"}
    r = requests.post(url, json={"prefetch_days": 3}, headers=auth, timeout=30)
    assert r.status_code == 201
    rid = r.json()["id"]
    with world.store.open(restore_key("a", rid)) as fh:
        req = RestoreRequest.from_bytes(fh.read())
    assert (req.site, req.prefetch_days, req.requested_by) == ("a", 3, "root")
    assert requests.get(f"{url}/{rid}", headers=auth, timeout=30).json()["phase"] == "pending"
    status = RestoreStatus(rid, "a", RestorePhase.PREFETCHING, 1.0, instances_indexed=8)
    world.store.put(restore_status_key("a", rid), status.to_bytes(), if_absent=False)
    got = requests.get(f"{url}/{rid}", headers=auth, timeout=30).json()
    assert got["phase"] == "prefetching" and got["instances_indexed"] == 8
    assert [j["id"] for j in requests.get(url, headers=auth, timeout=30).json()] == [rid]
    reader = {"Authorization": f"Bearer {world.tokens['reader_a']}"}
    assert requests.post(url, headers=reader, timeout=30).status_code == 403
    assert requests.get(f"{url}/{rid}", headers=reader, timeout=30).status_code == 403
    assert requests.get(f"{url}/nope", headers=auth, timeout=30).status_code == 404
    recs = [json.loads(line) for line in world.server.services.audit.path.read_text().splitlines()]
    created = [r for r in recs if r["action"] == "restore" and r["status"] == 201]
    assert created and created[-1]["token"] == "root" and rid in created[-1]["detail"]
    for bad in (b"not json", b"[3]"):  # the body is optional, but JSON and an object if sent
        r = requests.post(url, data=bad, headers=auth, timeout=30)
        assert r.status_code == 400 and "the body must be" in r.text
    r = requests.post(url, headers=auth, timeout=30)
    assert r.status_code == 201
    with world.store.open(restore_key("a", r.json()["id"])) as fh:
        assert RestoreRequest.from_bytes(fh.read()).prefetch_days is None


def test_patient_data_access_is_audited(world: World) -> None:
    audit = world.server.services.audit
    before = audit.seq
    study = world.studies["s2"]
    client(world, "reader_a").search_for_studies(search_filters={"PatientID": "PA2"})
    client(world, "reader_a").retrieve_study_metadata(study)
    client(world, "reader_a").retrieve_study(study)
    # a streamed response is audited when the handler returns, which may be just after the
    # client has read the last byte
    wait_for(lambda: audit.seq >= before + 3, what="the WADO audit record")
    recs = [json.loads(line) for line in audit.path.read_text().splitlines()][before:]
    assert [(r["action"], r["token"], r["role"], r["outcome"]) for r in recs] == [
        ("qido", "rad-a", "reader", "ok"),
        ("wado-metadata", "rad-a", "reader", "ok"),
        ("wado", "rad-a", "reader", "ok"),
    ]
    assert [r["study_uid"] for r in recs[1:]] == [study, study]
    assert all(r["time"] > 0 and r["client"] == "127.0.0.1" for r in recs)


def test_unknown_path_with_token_is_404(world: World, tmp_path: Path) -> None:
    assert get(world, "/dicomweb/nothing", "admin").status_code == 404


def test_cors_for_a_configured_viewer_origin(world: World) -> None:
    url = world.server.dicomweb + "/studies"
    pre = {
        "Origin": VIEWER,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    r = requests.options(url, headers=pre, timeout=30)
    assert r.status_code == 204 and "Authorization" in r.headers["Access-Control-Allow-Headers"]
    assert r.headers["Access-Control-Allow-Origin"] == VIEWER and not r.content
    r = get(world, "/dicomweb/studies", "reader_a", headers={"Origin": VIEWER})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == VIEWER
    study = world.studies["s1"]
    r = get(world, f"/dicomweb/studies/{study}", "reader_a", headers={"Origin": VIEWER})
    assert r.headers["Access-Control-Allow-Origin"] == VIEWER  # streamed responses too
    r = get(world, "/dicomweb/studies", None, headers={"Origin": VIEWER})
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == VIEWER
    evil = dict(pre, Origin="https://evil.example")
    r = requests.options(url, headers=evil, timeout=30)
    assert r.status_code == 401 and "Access-Control-Allow-Origin" not in r.headers


def test_wado_streams_large_objects_in_chunks(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects over SMALL_OBJECT are streamed chunk by chunk instead of read whole."""
    from shared.dicomweb import stream

    monkeypatch.setattr(stream, "SMALL_OBJECT", 0)
    monkeypatch.setattr(stream, "CHUNK", 1000)
    monkeypatch.setattr(stream, "SEGMENT", 3000)
    study = world.studies["s1"]
    r = get(world, f"/dicomweb/studies/{study}", "reader_a")
    parts = split_multipart(r)
    assert len(parts) == 6 and int(r.headers["Content-Length"]) == len(r.content)
    assert all(world.data["a"][pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID] == p for p in parts)
