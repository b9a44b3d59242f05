"""`hpacs-cloud serve` as a process: TLS when a certificate is configured, the dev admin token,
the index built before the port opens, audit shipped at shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import requests

from cloud_api.auth import TokenStore
from cloud_api.cli import _dev_token
from shared.config import parse_config
from shared.store.base import open_store
from shared.synthetic import StudySpec
from tests.support.cloud import seed_site
from tests.support.net import free_port, port_open, wait_for
from tests.support.tls import server_cert_files


def test_serve_over_tls_with_dev_token(tmp_path: Path, catalog_url: str) -> None:
    key_file, cert_file, ca_file = server_cert_files(tmp_path)
    store_url = f"file://{tmp_path / 'bucket'}"
    store = open_store(store_url)
    seed_site(store, "a", StudySpec(patient_id="PX"))
    port = free_port()
    token_file = tmp_path / "dev-admin.token"
    cfg = tmp_path / "hpacs.toml"
    cfg.write_text(
        f'[cloud]\nport = {port}\nstore_url = "{store_url}"\ndata_dir = "{tmp_path / "cloud"}"\n'
        f'tokens_file = "{tmp_path / "tokens.json"}"\ndev_admin_token_file = "{token_file}"\n'
        f'tls_cert_file = "{cert_file}"\ntls_key_file = "{key_file}"\ncatalog = "{catalog_url}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_api", "--config", str(cfg), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 30, "cloud API port")
        assert proc.poll() is None
        token = token_file.read_text().strip()
        url = f"https://127.0.0.1:{port}/dicomweb/studies"
        r = requests.get(
            url, headers={"Authorization": f"Bearer {token}"}, verify=str(ca_file), timeout=30
        )
        assert r.status_code == 200 and len(r.json()) == 1  # index built before the port opened
        assert requests.get(url, verify=str(ca_file), timeout=30).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert f"dev admin token (also in {token_file}): {token}" in out
    assert "PX" not in out  # no PHI in the INFO log
    assert [i.key for i in store.list("audit/cloud_api/")], "audit not shipped at shutdown"


def test_dev_token_is_reused_across_starts(tmp_path: Path) -> None:
    """`make up` starts the API again and again: the token in the file stays valid and no
    revoked `dev-admin` row piles up; a token revoked meanwhile is replaced."""
    cfg = parse_config(
        {
            "cloud": {
                "tokens_file": str(tmp_path / "tokens.json"),
                "dev_admin_token_file": str(tmp_path / "dev-admin.token"),
            }
        }
    )
    first = _dev_token(cfg)
    assert _dev_token(cfg) == first == (tmp_path / "dev-admin.token").read_text().strip()
    store = TokenStore(cfg.cloud.tokens_file)
    assert [(r.name, r.revoked_at) for r in store.list()] == [("dev-admin", None)]
    store.revoke("dev-admin")
    second = _dev_token(cfg)
    assert second != first
    assert [r.revoked_at is None for r in TokenStore(cfg.cloud.tokens_file).list()] == [False, True]
