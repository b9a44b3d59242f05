"""Orthanc's DICOMweb plugin (Debian packages) pushes a study into hpacs by STOW-RS and pulls
it back by WADO-RS, every byte identical (issue 9: its 73-character boundary used to be a 500);
into the cloud API (both catalog backends) and into the edge (the same shared routes, stored
through the edge's Ingestor).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest

from shared.keys import instance_key
from shared.store.base import ObjectStore, open_store
from tests.support.cloud import cloud_config, dataset_bytes, make_token, running_cloud
from tests.support.dicomweb import compressed, study
from tests.support.edgeweb import edge_web_config, running_edge_web
from tests.support.orthanc import DicomwebServer, Orthanc, running_orthanc
from tests.support.postgres import fresh_database

Stored = Callable[[str, str, str], bytes]  # (study, series, SOP UID) -> the bytes hpacs holds


@pytest.fixture(params=["cloud-sqlite", "cloud-postgresql", "edge"])
def peers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stored, Orthanc]]:
    if request.param == "edge":
        with running_edge_web(edge_web_config(tmp_path / "edge")) as web:
            hpacs = DicomwebServer(web.dicomweb + "/", web.token_headers)

            def cached(study: str, series: str, sop: str) -> bytes:
                row = (
                    web.edge.db.reader()
                    .execute("SELECT path FROM instances WHERE sop_instance_uid = ?", (sop,))
                    .fetchone()
                )
                return (web.edge.cache.root / row["path"]).read_bytes()

            with running_orthanc(tmp_path / "orthanc", {"hpacs": hpacs}) as orthanc:
                yield cached, orthanc
        return
    catalog = ""
    if request.param == "cloud-postgresql":
        catalog = fresh_database(request.getfixturevalue("pg_cluster"))
    cfg = cloud_config(tmp_path / "cloud", catalog=catalog)
    store = open_store(cfg.store_url)
    # Orthanc reads patient data back too: a token that may store into `cloud` and read it
    token = make_token(cfg, "orthanc", "admin", [])
    with running_cloud(cfg, store) as cloud:
        hpacs = DicomwebServer(cloud.dicomweb + "/", {"Authorization": f"Bearer {token}"})
        with running_orthanc(tmp_path / "orthanc", {"hpacs": hpacs}) as orthanc:
            yield _bucket(store), orthanc


def _bucket(store: ObjectStore) -> Stored:
    def stored(study: str, series: str, sop: str) -> bytes:
        with store.open(instance_key(study, series, sop)) as fh:
            return fh.read()

    return stored


def test_orthanc_stores_into_hpacs_and_retrieves_back(peers: tuple[Stored, Orthanc]) -> None:
    stored, orthanc = peers
    datasets = study(3, series_count=2)
    blobs = [dataset_bytes(ds) for ds in datasets]
    blobs[1] = compressed(datasets[1], "1.2.840.10008.1.2.4.80")  # a JPEG-LS one too
    originals = {pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID: b for b in blobs}
    ids = {orthanc.upload(b)["ParentStudy"] for b in blobs}
    assert len(ids) == 1
    (orthanc_study,) = ids

    r = orthanc.rest("POST", "/dicom-web/servers/hpacs/stow", json={"Resources": [orthanc_study]})
    assert "Failed" not in r.text, r.text
    for uid, data in originals.items():
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        held = stored(ds.StudyInstanceUID, ds.SeriesInstanceUID, uid)
        assert held == data, "hpacs stored other bytes than Orthanc sent"

    orthanc.rest("DELETE", f"/studies/{orthanc_study}")
    assert orthanc.rest("GET", "/instances").json() == []
    study_uid = datasets[0].StudyInstanceUID
    orthanc.rest(
        "POST",
        "/dicom-web/servers/hpacs/retrieve",
        json={"Resources": [{"Study": study_uid}]},
    )
    back = {}
    for instance_id in orthanc.rest("GET", "/instances").json():
        data = orthanc.file(instance_id)
        back[pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID] = data
    assert back == originals, orthanc.log()

    # WADO-RS through the plugin's proxy: hpacs's metadata as Orthanc sees it
    meta = orthanc.rest(
        "POST", "/dicom-web/servers/hpacs/get", json={"Uri": f"/studies/{study_uid}/metadata"}
    ).json()
    assert {m["00080018"]["Value"][0] for m in meta} == set(originals)
