"""One study UID is one study in every QIDO answer, whatever the sites that cataloged it; a
reader's site scope still decides what it sees, and its counts and ModalitiesInStudy are those
of the sites in its scope."""

from __future__ import annotations

from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient

from shared.store.base import open_store
from shared.synthetic import StudySpec, iter_study
from tests.support.cloud import cloud_config, make_token, running_cloud, seed_site

STUDY_UID = "1.2.826.0.1.3680043.10.1255.951"


def _value(ds: dict, tag: str) -> object:
    return ds[tag].get("Value", [None])[0]


def test_a_study_from_an_edge_and_from_stow_is_one_study(tmp_path: Path, catalog_url: str) -> None:
    cfg = cloud_config(tmp_path, catalog=catalog_url)
    store = open_store(cfg.store_url)
    ct = StudySpec(patient_id="P9", series_count=2, instances_per_series=3, study_uid=STUDY_UID)
    seed_site(store, "north", ct)
    tokens = {
        "admin": make_token(cfg, "root", "admin", []),
        "north": make_token(cfg, "rad-n", "reader", ["north"]),
        "cloud": make_token(cfg, "rad-c", "reader", ["cloud"]),
        "both": make_token(cfg, "rad-b", "reader", ["north", "cloud"]),
        "south": make_token(cfg, "rad-s", "reader", ["south"]),
        "agent": make_token(cfg, "up", "agent", ["cloud"]),
    }

    def client(who: str) -> DICOMwebClient:
        return DICOMwebClient(
            cfg_url + "/dicomweb", headers={"Authorization": f"Bearer {tokens[who]}"}
        )

    with running_cloud(cfg, store) as server:
        cfg_url = server.url
        # an AI result added later by STOW: same study, another series, site `cloud`
        sr = StudySpec(patient_id="P9", modality="SR", instances_per_series=2, study_uid=STUDY_UID)
        client("agent").store_instances(list(iter_study(sr)))
        expected = {  # who -> (series, instances, modalities)
            "admin": (3, 8, ["CT", "SR"]),
            "both": (3, 8, ["CT", "SR"]),
            "north": (2, 6, ["CT"]),
            "cloud": (1, 2, ["SR"]),
        }
        for who, (n_series, n_inst, mods) in expected.items():
            found = client(who).search_for_studies()
            assert [_value(s, "0020000D") for s in found] == [STUDY_UID], who
            s = found[0]
            assert (_value(s, "00201206"), _value(s, "00201208")) == (n_series, n_inst), who
            assert s["00080061"]["Value"] == mods, who
            assert len(client(who).search_for_series(STUDY_UID)) == n_series, who
            assert len(client(who).search_for_instances(STUDY_UID)) == n_inst, who
            assert len(client(who).retrieve_study(STUDY_UID)) == n_inst, who
        only_sr = client("north").search_for_studies(search_filters={"ModalitiesInStudy": "SR"})
        assert only_sr == []  # the SR series is not in north's scope
        assert client("both").search_for_studies(search_filters={"ModalitiesInStudy": "SR"})
        assert client("south").search_for_studies() == []
        r = requests.get(
            f"{server.dicomweb}/studies/{STUDY_UID}",
            headers={"Authorization": f"Bearer {tokens['south']}"},
            timeout=30,
        )
        assert r.status_code == 404
        # the same after a poll that applies the STOW's journal object again (idempotent)
        server.poll()
        s = client("admin").search_for_studies()
        assert len(s) == 1 and _value(s[0], "00201208") == 8
