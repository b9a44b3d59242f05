"""The cloud API on a real GCS emulator (fake-gcs-server): catalog discovery with start
offsets, QIDO, streamed WADO-RS and STOW-RS through dicomweb-client, a restore request."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from shared.keys import restore_key
from shared.synthetic import StudySpec, iter_study
from tests.support.cloud import cloud_config, make_token, running_cloud, seed_site
from tests.support.gcs import Emulator, gcs_emulator, gcs_store

__all__ = ["gcs_emulator"]


def test_cloud_api_on_the_gcs_emulator(
    tmp_path: Path, gcs_emulator: Emulator, catalog_url: str
) -> None:
    store = gcs_store(gcs_emulator.url)
    a = seed_site(store, "alpha", StudySpec(patient_id="GA", instances_per_series=3), batch=2)
    seed_site(store, "beta", StudySpec(patient_id="GB"))
    seed_site(store, "alpha-2", StudySpec(patient_id="GC"))  # sorts before "alpha/" in keys
    cfg = cloud_config(tmp_path, store_url="gs://unused", catalog=catalog_url)
    admin = make_token(cfg, "root", "admin", [])
    reader = make_token(cfg, "rad", "reader", ["alpha"])
    uploader = make_token(cfg, "up", "agent", ["cloud"])
    with running_cloud(cfg, store) as server:
        assert sorted(server.services.catalog.cursors()) == ["alpha", "alpha-2", "beta"]
        c = DICOMwebClient(server.dicomweb, headers={"Authorization": f"Bearer {reader}"})
        found = c.search_for_studies()
        assert len(found) == 1 and found[0]["00100020"]["Value"] == ["GA"]
        study = found[0]["0020000D"]["Value"][0]
        r = requests.get(
            f"{server.dicomweb}/studies/{study}",
            headers={"Authorization": f"Bearer {reader}"},
            timeout=30,
        )
        assert r.status_code == 200 and len(r.content) > sum(len(b) for b in a.values())
        got = c.retrieve_study(study)
        assert {d.SOPInstanceUID for d in got} == set(a)
        up = DICOMwebClient(server.dicomweb, headers={"Authorization": f"Bearer {uploader}"})
        up.store_instances(list(iter_study(StudySpec(patient_id="GS"))))
        assert [i.key for i in store.list("catalog/cloud/")] == [
            "catalog/cloud/000000000001.jsonl.gz"
        ]
        seed_site(store, "beta", StudySpec(patient_id="GB2"))
        server.poll()
        ad = DICOMwebClient(server.dicomweb, headers={"Authorization": f"Bearer {admin}"})
        assert len(ad.search_for_studies()) == 5  # GA, GB, GC, GS and the new GB2
        r = requests.post(
            f"{server.url}/api/sites/alpha/restores",
            headers={"Authorization": f"Bearer {admin}"},
            timeout=30,
        )
        assert r.status_code == 201
        assert store.head(restore_key("alpha", r.json()["id"])) is not None
        one = next(iter(a))
        assert pydicom.dcmread(io.BytesIO(a[one])).SOPInstanceUID == one
