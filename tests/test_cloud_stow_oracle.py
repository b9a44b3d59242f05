"""STOW-RS is no existence oracle: an `agent` token (it may not read patient data) gets the same
answer for a new instance, the same bytes again, and other bytes under a UID that exists at some
site; the other bytes are kept beside the original, never over it. A token that may read every
site still learns of the conflict (409, 0x0111)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset

from shared.catalog import decode_batch
from shared.keys import instance_key
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


@dataclass
class Site:
    server: CloudServer
    store: ObjectStore
    existing: list[Dataset]  # instances of site `a` (an edge's, synced)
    agent: str
    admin: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, module_catalog_url: str) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("oracle")
    cfg = cloud_config(tmp, catalog=module_catalog_url)
    store = open_store(cfg.store_url)
    spec = StudySpec(patient_id="PO1", instances_per_series=3)
    seeded = seed_site(store, "a", spec)
    agent = make_token(cfg, "uploader", "agent", ["cloud"])
    admin = make_token(cfg, "root", "admin", [])
    with running_cloud(cfg, store) as server:
        existing = [pydicom.dcmread(io.BytesIO(b)) for b in seeded.values()]
        yield Site(server, store, existing, agent, admin)


def _stow(site: Site, ds: Dataset, token: str) -> requests.Response:
    b = "oracleboundary"
    body = (
        f"--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + dataset_bytes(ds)
        + f"\r\n--{b}--\r\n".encode()
    )
    return requests.post(
        site.server.dicomweb + "/studies",
        data=body,
        timeout=30,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={b}',
            "Authorization": f"Bearer {token}",
        },
    )


def _shape(r: requests.Response) -> tuple[int, Any]:
    """Status and body with every UID and URL blanked: what may differ between instances."""

    def blank(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: blank(x) for k, x in v.items()}
        if isinstance(v, list):
            return [blank(x) for x in v]
        return re.sub(r"[0-9.]{8,}", "UID", v) if isinstance(v, str) else v

    return r.status_code, blank(r.json())


def test_agent_cannot_tell_new_from_existing_instances(site: Site) -> None:
    new = next(iter_study(StudySpec(patient_id="PO2", instances_per_series=1)))
    same = site.existing[0]
    other = site.existing[1].copy()
    other.PatientName = "CHANGED^NAME"
    for ds in (same, other):  # they exist: the test would pass vacuously otherwise
        assert site.store.head(
            instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        )
    answers = {
        name: _stow(site, ds, site.agent)
        for name, ds in [("new", new), ("same bytes", same), ("other bytes", other)]
    }
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 200)
    shapes = {name: _shape(r) for name, r in answers.items()}
    assert shapes["new"] == shapes["same bytes"] == shapes["other bytes"]
    assert "00081198" not in answers["other bytes"].json()  # no FailedSOPSequence


def test_other_bytes_are_kept_beside_the_original_and_audited(site: Site) -> None:
    victim = site.existing[2]
    other = victim.copy()
    other.PatientName = "OTHER^BYTES"
    key = instance_key(victim.StudyInstanceUID, victim.SeriesInstanceUID, victim.SOPInstanceUID)
    original = site.store.head(key)
    assert _stow(site, other, site.agent).status_code == 200
    assert site.store.head(key) == original  # never overwritten
    prefix = f"conflicts/{victim.StudyInstanceUID}/{victim.SeriesInstanceUID}/"
    kept = [i.key for i in site.store.list(prefix + victim.SOPInstanceUID + ".")]
    assert len(kept) == 1
    with site.store.open(kept[0]) as fh:
        assert fh.read() == dataset_bytes(other)
    # the catalog journal did not follow the conflicting copy: no row for it under site `cloud`
    journalled = []
    for info in site.store.list("catalog/cloud/"):
        with site.store.open(info.key) as fh:
            journalled += [r.header.sop_instance_uid for r in decode_batch(fh.read())]
    assert victim.SOPInstanceUID not in journalled
    last = site.server.services.audit.path.read_text().splitlines()[-1]
    assert "conflicts_kept=1" in last and '"token": "uploader"' in last


def test_a_token_that_may_read_every_site_learns_of_the_conflict(site: Site) -> None:
    other = site.existing[0].copy()
    other.PatientName = "ADMIN^SEES"
    r = _stow(site, other, site.admin)
    assert r.status_code == 409
    (failed,) = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0x0111]
