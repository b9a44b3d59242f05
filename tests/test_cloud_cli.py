"""`hpacs-cloud` verbs run in-process: tokens, and the catalog rebuild."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_api.auth import TokenStore
from cloud_api.catalog import INSTANCE, STUDY, Search, open_catalog
from cloud_api.catalog.poller import Poller
from cloud_api.cli import main
from shared.store.base import open_store
from shared.synthetic import StudySpec
from tests.support.cloud import seed_site


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


def test_catalog_rebuild_gives_the_same_answers(
    tmp_path: Path, catalog_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store_url = f"file://{tmp_path / 'bucket'}"
    store = open_store(store_url)
    for i in range(3):
        seed_site(store, f"s{i % 2}", StudySpec(patient_id=f"P{i}", series_count=2), batch=3)
    cfg = tmp_path / "hpacs.toml"
    cfg.write_text(
        f'[cloud]\nstore_url = "{store_url}"\ndata_dir = "{tmp_path / "cloud"}"\n'
        f'tokens_file = "{tmp_path / "tokens.json"}"\ncatalog = "{catalog_url}"\n'
    )
    queries = [Search(STUDY), Search(INSTANCE, {"PatientID": ["P2"]}), Search(STUDY, sites=["s1"])]
    catalog = open_catalog(catalog_url, tmp_path / "cloud")
    Poller(catalog, store).poll()
    before = [catalog.search(q) for q in queries]
    seed_site(store, "s1", StudySpec(patient_id="P9"))  # journalled since: the rebuild has it
    assert main(["--config", str(cfg), "catalog", "rebuild"]) == 0
    out = capsys.readouterr().out
    if catalog_url:  # PostgreSQL: our catalog (a running replica) holds the lead and rebuilds
        assert "the replica applying journal objects rebuilds it" in out, out
        assert catalog.counts()["instances"] == 0
        assert Poller(catalog, store).poll().rows == 21
    else:
        assert "catalog rebuilt: 7 objects, 21 rows, 4 studies" in out, out
    after = [catalog.search(q) for q in queries]
    assert after[1] == before[1]
    assert [r for r in after[0] if r["PatientID"] != "P9"] == before[0]
    assert len(after[2]) == len(before[2]) + 1
    catalog.close()


def test_catalog_urls_are_logged_without_their_password() -> None:
    from cloud_api.app import _safe_url

    assert (
        _safe_url("postgresql://hpacs:s3cret@db:5432/hpacs") == "postgresql://hpacs@db:5432/hpacs"
    )
    assert _safe_url("postgresql://db/hpacs") == "postgresql://db/hpacs"
    assert _safe_url("sqlite:///var/cloud/catalog.sqlite") == "sqlite:///var/cloud/catalog.sqlite"
