"""The cloud catalog applies corrections (both backends): a row whose object is under a revision
key (edge/corrections.py) sets its study's attributes as they are, empty ones included; later
rows that are not corrections (another site still holding the old values) do not undo them;
instances are served from the new key; a rebuild from the bucket gives the same answers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cloud_api.catalog import STUDY, Catalog, Search, open_catalog
from cloud_api.catalog.poller import Poller
from shared.catalog import CatalogRow, decode_batch
from shared.keys import is_revision_key, revision_key
from shared.store.base import ObjectStore, open_store
from shared.synthetic import StudySpec
from tests.support.cloud import append_rows, seed_site
from tests.test_catalog_contract import _empty


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path / 'bucket'}")


def _rows(store: ObjectStore, site: str) -> list[CatalogRow]:
    out = []
    for info in store.list(f"catalog/{site}/"):
        with store.open(info.key) as fh:
            out += decode_batch(fh.read())
    return out


def _corrected(row: CatalogRow, **attrs: str) -> CatalogRow:
    h = dataclasses.replace(row.header, **attrs)
    key = revision_key(h.study_uid, h.series_uid, h.sop_instance_uid, "0badc0de")
    return dataclasses.replace(row, header=h, object_key=key, crc32c="0badc0de")


def _study(catalog: Catalog) -> dict[str, object]:
    (study,) = catalog.search(Search(STUDY))
    return study


def test_a_correction_replaces_the_study_attributes_and_stays(
    store: ObjectStore, catalog_url: str, tmp_path: Path
) -> None:
    catalog = open_catalog(catalog_url, tmp_path / "cloud")
    try:
        before = _corrections_applied(catalog, store)
    finally:
        catalog.close()  # the rebuild below leads the applies (PostgreSQL: one leader)
    again = open_catalog(_empty(catalog_url), tmp_path / "rebuilt")
    try:
        Poller(again, store).poll()
        uid = str(before[0][0]["StudyInstanceUID"])
        assert [again.search(Search(STUDY)), again.instances(uid)] == before
    finally:
        again.close()


def _corrections_applied(catalog: Catalog, store: ObjectStore) -> list[list[object]]:
    spec = StudySpec(patient_name="WRONG^NAME", patient_id="P-OLD", instances_per_series=2)
    seed_site(store, "edge1", spec)
    poller = Poller(catalog, store)
    poller.poll()
    originals = _rows(store, "edge1")
    assert _study(catalog)["PatientName"] == "WRONG^NAME"

    fixed = [
        _corrected(r, patient_name="RIGHT^NAME", patient_id="P-NEW", study_description="")
        for r in originals
    ]
    append_rows(store, "edge1", fixed)
    poller.poll()
    study = _study(catalog)
    assert (study["PatientName"], study["PatientID"]) == ("RIGHT^NAME", "P-NEW")
    assert not study.get("StudyDescription")  # cleared by the correction, not kept
    assert catalog.search(Search(STUDY, {"PatientName": ["wrong*"]})) == []
    assert catalog.search(Search(STUDY, {"PatientID": ["P-NEW"]}))
    refs = catalog.instances(str(study["StudyInstanceUID"]))
    assert len(refs) == 2 and all(is_revision_key(r.object_key) for r in refs)

    # another site still has the old values (it was never corrected): they do not come back
    stale = [dataclasses.replace(r, site="edge2") for r in originals[:1]]
    append_rows(store, "edge2", stale)
    poller.poll()
    assert (_study(catalog)["PatientName"], _study(catalog)["PatientID"]) == (
        "RIGHT^NAME",
        "P-NEW",
    )
    # a second correction wins again
    append_rows(store, "edge1", [_corrected(fixed[0], patient_name="THIRD^NAME")])
    poller.poll()
    assert _study(catalog)["PatientName"] == "THIRD^NAME"

    return [catalog.search(Search(STUDY)), catalog.instances(str(study["StudyInstanceUID"]))]
