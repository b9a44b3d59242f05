"""`hpacs-cloud` verbs run in-process: tokens, and the catalog rebuild."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_api.auth import TokenStore
from cloud_api.cli import main


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
