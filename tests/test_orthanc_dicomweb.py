"""Orthanc's DICOMweb plugin (Debian packages) pushes a study into hpacs by STOW-RS and pulls
it back by WADO-RS, every byte identical (issue 9: its 73-character boundary used to be a 500).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from shared.keys import instance_key
from shared.store.base import ObjectStore, open_store
from tests.support.cloud import CloudServer, cloud_config, dataset_bytes, make_token, running_cloud
from tests.support.dicomweb import compressed, study
from tests.support.orthanc import DicomwebServer, Orthanc, running_orthanc


@pytest.fixture
def peers(tmp_path: Path, catalog_url: str) -> Iterator[tuple[CloudServer, ObjectStore, Orthanc]]:
    cfg = cloud_config(tmp_path / "cloud", catalog=catalog_url)
    store = open_store(cfg.store_url)
    # Orthanc reads patient data back too: a token that may store into `cloud` and read it
    token = make_token(cfg, "orthanc", "admin", [])
    with running_cloud(cfg, store) as cloud:
        hpacs = DicomwebServer(cloud.dicomweb + "/", {"Authorization": f"Bearer {token}"})
        with running_orthanc(tmp_path / "orthanc", {"hpacs": hpacs}) as orthanc:
            yield cloud, store, orthanc


def test_orthanc_stores_into_hpacs_and_retrieves_back(
    peers: tuple[CloudServer, ObjectStore, Orthanc],
) -> None:
    _cloud, store, orthanc = peers
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
        key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, uid)
        with store.open(key) as fh:
            assert fh.read() == data, "hpacs stored other bytes than Orthanc sent"

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
