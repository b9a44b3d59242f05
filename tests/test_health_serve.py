"""`hpacs-edge serve` starts the HTTP side: token made once and printed, probes, console API."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.net import free_port, port_open, wait_for


def _get(port: int, path: str, token: str = "") -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _serve(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, err
    return err


def test_serve_prints_the_token_once_and_guards_the_api(tmp_path: Path) -> None:
    http_port = free_port()
    data_dir = tmp_path / "edge"
    config = tmp_path / "hpacs.toml"
    config.write_text(
        "[edge]\n"
        f'data_dir = "{data_dir}"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'http_host = "127.0.0.1"\nhttp_port = {http_port}\nmin_free_bytes = 0\n'
        "[edge.tls]\nport = 0\n"
        f'[sync]\nstore_url = "file://{tmp_path / "bucket"}"\n'
    )
    (tmp_path / "bucket").mkdir()
    proc = _serve(config)
    try:
        wait_for(lambda: port_open(http_port), timeout_s=30, what="edge http")
        token_file = data_dir / "console_token"
        token = token_file.read_text().strip()
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        assert _get(http_port, "/healthz") == 200
        assert _get(http_port, "/readyz") == 200
        assert _get(http_port, "/metrics") == 200
        assert _get(http_port, "/api/status") == 401
        assert _get(http_port, "/api/status", token) == 200
    finally:
        err = _stop(proc)
    assert f"console token (stored in {token_file}): {token}" in err
    assert token not in err.replace(f"): {token}", "")  # printed once, never logged

    proc = _serve(config)  # second start: the same token, not printed again
    try:
        wait_for(lambda: port_open(http_port), timeout_s=30, what="edge http")
        assert _get(http_port, "/api/status", token) == 200
        body = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10).read()
        assert json.loads(body) == {"status": "alive"}
    finally:
        err = _stop(proc)
    assert "console token" not in err
