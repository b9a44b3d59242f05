"""The catalog index is derived only from catalog/<site>/ objects: polls, retractions, rebuilds,
replicas side by side; and the token CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import requests

from cloud_api.auth import TokenStore
from cloud_api.catalog_index import CatalogIndex
from cloud_api.cli import main
from cloud_api.qido import STUDY, build_sql, parse_query, render
from shared.store.base import ObjectStore, open_store
from shared.synthetic import StudySpec
from tests.support.cloud import (
    append_rows,
    cloud_config,
    make_token,
    running_cloud,
    seed_site,
)


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path / 'bucket'}")


def _answers(index: CatalogIndex, **filters: str) -> list[dict]:
    q = parse_query(STUDY, filters, {}, 1000, None)
    sql, args = build_sql(q)
    return [render(STUDY, r, "http://x") for r in index.reader().execute(sql, args)]


def test_poll_is_incremental_and_discovers_sites(tmp_path: Path, store: ObjectStore) -> None:
    index = CatalogIndex(tmp_path / "i.sqlite")
    seed_site(store, "north", StudySpec(patient_id="N1", instances_per_series=3), batch=2)
    first = index.poll(store)
    assert (first.objects, first.rows) == (2, 3)
    assert index.poll(store).objects == 0  # nothing new: the cursor skips what was applied
    seed_site(store, "south", StudySpec(patient_id="S1"))
    seed_site(store, "north", StudySpec(patient_id="N2"))
    res = index.poll(store)
    assert (res.objects, res.rows) == (2, 6)
    assert index.sites() == ["north", "south"]
    assert index.counts() == {"studies": 3, "series": 3, "instances": 9}
    index.close()


def test_retracted_rows_disappear(tmp_path: Path, store: ObjectStore) -> None:
    index = CatalogIndex(tmp_path / "i.sqlite")
    seed_site(store, "x", StudySpec(patient_id="X1", instances_per_series=2))
    index.poll(store)
    rows = list(index.reader().execute("SELECT sop_instance_uid FROM instances"))
    from shared.catalog import decode_batch

    with store.open("catalog/x/000000000001.jsonl.gz") as fh:
        originals = decode_batch(fh.read())
    gone = [dataclasses.replace(r, deleted=True) for r in originals]
    append_rows(store, "x", gone[:1])
    index.poll(store)
    assert index.counts()["instances"] == len(rows) - 1
    append_rows(store, "x", gone[1:])
    index.poll(store)
    assert index.counts() == {"studies": 0, "series": 0, "instances": 0}
    index.close()


def test_rebuild_gives_the_same_answers(tmp_path: Path, store: ObjectStore) -> None:
    for i in range(4):
        seed_site(
            store,
            f"s{i % 2}",
            StudySpec(patient_id=f"P{i}", study_date=f"2024010{i + 1}", series_count=2),
            batch=3,
        )
    first = CatalogIndex(tmp_path / "one.sqlite")
    first.poll(store)
    before = _answers(first), _answers(first, PatientID="P2")
    first.close()
    for p in tmp_path.glob("one.sqlite*"):
        p.unlink()
    again = CatalogIndex(tmp_path / "one.sqlite")
    again.poll(store)
    assert (_answers(again), _answers(again, PatientID="P2")) == before
    again.close()


def test_replicas_side_by_side_agree(tmp_path: Path, store: ObjectStore) -> None:
    """Two API replicas on one bucket, each with its own index: same answers, and a STOW
    accepted by one is visible to the other after its next poll."""
    seed_site(store, "a", StudySpec(patient_id="PA"))
    c1 = cloud_config(tmp_path / "r1")
    c2 = dataclasses.replace(cloud_config(tmp_path / "r2"), tokens_file=c1.tokens_file)
    token = make_token(c1, "root", "admin", [])
    auth = {"Authorization": f"Bearer {token}"}
    with running_cloud(c1, store) as r1, running_cloud(c2, store) as r2:
        a1 = requests.get(r1.dicomweb + "/studies", headers=auth, timeout=30).json()
        a2 = requests.get(r2.dicomweb + "/studies", headers=auth, timeout=30).json()
        assert a1 and [_strip(x) for x in a1] == [_strip(x) for x in a2]
        seed_site(store, "b", StudySpec(patient_id="PB"))
        r1.poll()
        r2.poll()
        a1 = requests.get(r1.dicomweb + "/studies", headers=auth, timeout=30).json()
        a2 = requests.get(r2.dicomweb + "/studies", headers=auth, timeout=30).json()
        assert len(a1) == 2 and [_strip(x) for x in a1] == [_strip(x) for x in a2]


def _strip(ds: dict) -> dict:
    return {k: v for k, v in ds.items() if k != "00081190"}  # RetrieveURL names the replica


def test_token_cli_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "hpacs.toml"
    tokens_file = tmp_path / "tokens.json"
    cfg.write_text(f'[cloud]\ntokens_file = "{tokens_file}"\ndata_dir = "{tmp_path}"\n')
    args = ["--config", str(cfg), "token"]
    assert main([*args, "create", "--role", "reader", "--sites", "a,b", "--name", "dr-x"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("hpacs_") and token not in tokens_file.read_text()  # stored hashed
    assert oct(tokens_file.stat().st_mode & 0o777) == "0o600"
    p = TokenStore(tokens_file).authenticate(f"Bearer {token}")
    assert (p.name, p.role, p.sites) == ("dr-x", "reader", ("a", "b"))
    assert main([*args, "create", "--role", "reader", "--name", "nosites"]) == 2
    assert main([*args, "list"]) == 0
    assert "dr-x\treader\ta,b\tactive" in capsys.readouterr().out
    assert main([*args, "revoke", "dr-x"]) == 0
    from shared.errors import Unauthenticated

    with pytest.raises(Unauthenticated):
        TokenStore(tokens_file).authenticate(f"Bearer {token}")
    assert main([*args, "revoke", "dr-x"]) == 1


def test_rows_keep_catalog_fields(tmp_path: Path, store: ObjectStore) -> None:
    data = seed_site(store, "z", StudySpec(patient_id="Z1", instances_per_series=1))
    index = CatalogIndex(tmp_path / "i.sqlite")
    index.poll(store)
    row = index.reader().execute("SELECT object_key, size, crc32c FROM instances").fetchone()
    assert row["size"] == len(next(iter(data.values())))
    assert row["object_key"].startswith("instances/") and len(row["crc32c"]) == 8
    index.close()
