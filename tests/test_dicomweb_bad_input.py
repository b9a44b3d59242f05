"""Bad input to DICOMweb is a 4xx with a problem+json body, never a 500 or a blank 200.

One table, walked against every side that serves DICOMweb. Each row is what an attacker (or a
sloppy client) sent in issue 9. A target only has to say where its DICOMweb lives, which
tokens to use and which seeded instance the paths name: the cloud (on both catalog backends)
and the edge (the same shared routes over its own source).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from shared.store.base import open_store
from tests.support.cloud import cloud_config, dataset_bytes, make_token, running_cloud
from tests.support.dicomweb import seed_objects, study
from tests.support.edgeweb import edge_web_config, running_edge_web
from tests.support.postgres import fresh_database


@dataclass(frozen=True)
class Target:
    dicomweb: str  # http://host:port/dicomweb
    read_headers: dict[str, str]
    write_headers: dict[str, str]
    study: str
    series: str
    instance: str


@dataclass(frozen=True)
class Row:
    name: str
    method: str
    path: str  # under /dicomweb; {study} {series} {instance} are filled in
    status: int
    headers: dict[str, str] | None = None
    body: bytes | None = None


LOSSY = "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"
IN = "/studies/{study}/series/{series}/instances/{instance}"
MP = "multipart/related; type=application/dicom; boundary="
STOW = "/studies"
DICOM_PART = b"Content-Type: application/dicom\r\n\r\nnot even dicom"

ROWS = [
    # rendered and thumbnail parameters
    Row("rendered quality=abc", "GET", IN + "/rendered?quality=abc", 400),
    Row("rendered quality=0", "GET", IN + "/rendered?quality=0", 400),
    Row("rendered quality=101", "GET", IN + "/rendered?quality=101", 400),
    Row("rendered viewport=-5,-5", "GET", IN + "/rendered?viewport=-5,-5", 400),
    Row("rendered viewport=0,0", "GET", IN + "/rendered?viewport=0,0", 400),
    Row("rendered viewport=abc", "GET", IN + "/rendered?viewport=abc", 400),
    Row("rendered viewport huge", "GET", IN + "/rendered?viewport=99999999999,5", 400),
    Row("rendered viewport region off", "GET", IN + "/rendered?viewport=8,8,60,60,10,10", 400),
    Row("rendered window=nan,nan", "GET", IN + "/rendered?window=nan,nan", 400),
    Row("rendered window=inf,10", "GET", IN + "/rendered?window=inf,10", 400),
    Row("rendered window=1,0", "GET", IN + "/rendered?window=1,0", 400),
    Row("rendered window=1", "GET", IN + "/rendered?window=1", 400),
    Row("rendered window function", "GET", IN + "/rendered?window=1,2,cubic", 400),
    Row("thumbnail viewport=-1,2", "GET", IN + "/thumbnail?viewport=-1,2", 400),
    Row(
        "series rendered quality=abc",
        "GET",
        "/studies/{study}/series/{series}/rendered?quality=abc",
        400,
    ),
    Row("rendered frame abc", "GET", IN + "/frames/abc/rendered", 400),
    Row("rendered as webp only", "GET", IN + "/rendered", 406, {"Accept": "image/webp"}),
    # frames and bulk data
    Row("frames abc", "GET", IN + "/frames/abc", 400),
    Row("frames 0", "GET", IN + "/frames/0", 400),
    Row("frames 1,,2", "GET", IN + "/frames/1,,2", 400),
    Row("frames -1", "GET", IN + "/frames/-1", 400),
    Row("frames overflow", "GET", IN + "/frames/99999999999999999999", 404),
    Row("bulkdata tag xyz", "GET", IN + "/bulkdata/XYZ", 400),
    Row("bulkdata tag too long", "GET", IN + "/bulkdata/7FE000100", 400),
    # negotiation
    Row(
        "metadata as XML",
        "GET",
        "/studies/{study}/metadata",
        406,
        {"Accept": "application/dicom+xml"},
    ),
    Row(
        "instances as a lossy syntax",
        "GET",
        "/studies/{study}",
        406,
        {"Accept": LOSSY},
    ),
    Row("bad UID in the path", "GET", "/studies/1.2.x/metadata", 400),
    # STOW-RS bodies
    Row("STOW without Content-Type", "POST", STOW, 415, {}, b"x"),
    Row("STOW as JSON", "POST", STOW, 415, {"Content-Type": "application/json"}, b"{}"),
    Row("STOW without boundary", "POST", STOW, 400, {"Content-Type": "multipart/related"}, b"x"),
    Row(
        "STOW duplicate boundary",
        "POST",
        STOW,
        400,
        {"Content-Type": MP + "a; boundary=b"},
        b"--a\r\n" + DICOM_PART + b"\r\n--a--",
    ),
    Row("STOW empty boundary", "POST", STOW, 400, {"Content-Type": MP + '""'}, b"x"),
    Row("STOW boundary too long", "POST", STOW, 400, {"Content-Type": MP + "z" * 201}, b"x"),
    Row("STOW empty body", "POST", STOW, 400, {"Content-Type": MP + "b"}, b""),
    Row("STOW body without the boundary", "POST", STOW, 400, {"Content-Type": MP + "b"}, b"junk"),
    Row(
        "STOW no closing boundary",
        "POST",
        STOW,
        400,
        {"Content-Type": MP + "b"},
        b"--b\r\n" + DICOM_PART,
    ),
    Row(
        "STOW data after a delimiter",
        "POST",
        STOW,
        400,
        {"Content-Type": MP + "b"},
        b"--bjunk\r\n" + DICOM_PART + b"\r\n--b--",
    ),
    Row("STOW no parts", "POST", STOW, 400, {"Content-Type": MP + "b"}, b"--b--\r\n"),
    Row(
        "STOW malformed part header",
        "POST",
        STOW,
        400,
        {"Content-Type": MP + "b"},
        b"--b\r\nnot a header\r\n\r\nx\r\n--b--",
    ),
    # QIDO paging and matching keys
    Row("QIDO offset overflow", "GET", "/studies?offset=99999999999999999999", 400),
    Row("QIDO limit not a number", "GET", "/studies?limit=ten", 400),
    Row("QIDO unknown attribute", "GET", "/studies?NoSuchKeyword=1", 400),
    Row("QIDO series key at the study level", "GET", "/studies?Modality=CT", 400),
    Row("QIDO malformed UID", "GET", "/studies?StudyInstanceUID=1.2.x", 400),
    Row("QIDO date range backwards", "GET", "/studies?StudyDate=2020-abc", 400),
]


@pytest.fixture(scope="module", params=["cloud-sqlite", "cloud-postgresql", "edge"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    tmp: Path = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    (ds,) = study(1)
    if request.param == "edge":
        with running_edge_web(edge_web_config(tmp)) as web:
            blob = dataset_bytes(ds)
            body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + blob + b"\r\n--b--\r\n"
            headers = {**web.token_headers, "Content-Type": MP + "b"}
            r = requests.post(web.dicomweb + "/studies", data=body, headers=headers, timeout=30)
            assert r.status_code == 200, r.text
            yield Target(
                web.dicomweb,
                web.token_headers,
                web.token_headers,
                ds.StudyInstanceUID,
                ds.SeriesInstanceUID,
                ds.SOPInstanceUID,
            )
        return
    catalog = ""
    if request.param == "cloud-postgresql":
        catalog = fresh_database(request.getfixturevalue("pg_cluster"))
    cfg = cloud_config(tmp, max_body_bytes=1_000_000, catalog=catalog)
    store = open_store(cfg.store_url)
    seed_objects(store, "a", [dataset_bytes(ds)])
    admin = make_token(cfg, "root", "admin", [])
    with running_cloud(cfg, store) as server:
        auth = {"Authorization": f"Bearer {admin}"}
        yield Target(
            server.dicomweb,
            auth,
            auth,
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
        )


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_input_is_a_4xx_problem(target: Target, row: Row) -> None:
    path = row.path.format(study=target.study, series=target.series, instance=target.instance)
    headers = dict(target.write_headers if row.method == "POST" else target.read_headers)
    headers.update(row.headers or {})
    if row.method == "POST" and "Content-Type" not in (row.headers or {}):
        headers["Content-Type"] = ""  # requests would otherwise send none at all: same thing
    r = requests.request(
        row.method, target.dicomweb + path, headers=headers, data=row.body, timeout=30
    )
    assert r.status_code == row.status, (row.name, r.status_code, r.text[:300])
    assert r.headers["Content-Type"].startswith("application/problem+json"), row.name
    problem = r.json()
    assert problem["status"] == row.status and problem["detail"], row.name


def test_the_seeded_instance_itself_renders(target: Target) -> None:
    """The table's paths name a real instance: a 400 there is the parameter's fault."""
    path = f"/studies/{target.study}/series/{target.series}/instances/{target.instance}"
    r = requests.get(target.dicomweb + path + "/rendered", headers=target.read_headers, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
