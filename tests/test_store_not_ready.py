"""No service exits because its object store is not ready yet (defect 12 of issue 12).

Under `make up` (or any service manager) the bucket's emulator can come up after the cloud
API and the sync agent. Each must wait: retry with capped backoff, answer 503 on /readyz (and
on data routes) meanwhile, and say so once in its log: one WARNING, then one INFO when ready.
Two real delays, against the real GCS emulator: the bucket created late (the 404 the
launcher's race produced), and the emulator's port opening late (connection refused).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from shared.store.gcs import GcsStore
from tests.support.edge import write_toml
from tests.support.gcs import BUCKET, Emulator
from tests.support.net import free_port, port_open, wait_for
from tests.support.output import Output
from tests.support.sync import site, start_agent_process, write_config

ROOT = Path(__file__).resolve().parents[1]
NOT_READY = "object store not ready"
READY = "object store ready"


@contextmanager
def late_store(delay: str) -> Iterator[tuple[Emulator, Callable[[], None]]]:
    """An emulator port whose bucket (`bucket_late`) or whole server (`port_late`) comes later.

    Yields the emulator and `arrive()`, which makes the store ready."""
    emu = Emulator(free_port())
    if delay == "bucket_late":
        emu.start()

    def arrive() -> None:
        if emu.proc is None:
            emu.start()
        GcsStore(f"gs://{BUCKET}", emulator_host=emu.url, timeout_s=5).create_bucket()

    try:
        yield emu, arrive
    finally:
        emu.stop()


def _stop(proc: subprocess.Popen[str], out: Output) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return out.text()


def _says_once(log: str) -> None:
    warnings = [line for line in log.splitlines() if NOT_READY in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0], log
    infos = [line for line in log.splitlines() if READY in line and NOT_READY not in line]
    assert len(infos) == 1 and " INFO " in infos[0], log


def _get(port: int, path: str, token: str = "") -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=30)


DELAYS = ["bucket_late", "port_late"]


@pytest.mark.parametrize("delay", DELAYS)
def test_cloud_api_waits_for_its_store_and_says_so_once(tmp_path: Path, delay: str) -> None:
    port = free_port()
    token_file = tmp_path / "dev-admin.token"
    with late_store(delay) as (emu, arrive):
        config = write_toml(
            tmp_path / "hpacs.toml",
            {
                "sync": {"store_url": f"gs://{BUCKET}", "emulator_host": emu.url},
                "cloud": {
                    "port": port,
                    "store_url": f"gs://{BUCKET}",
                    "data_dir": str(tmp_path / "cloud"),
                    "tokens_file": str(tmp_path / "tokens.json"),
                    "dev_admin_token_file": str(token_file),
                },
            },
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloud_api", "--config", str(config), "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        out = Output(proc)
        try:
            wait_for(lambda: port_open(port) or proc.poll() is not None, 60, "cloud API port")
            assert proc.poll() is None, out.text()
            token = token_file.read_text().strip()
            assert _get(port, "/healthz").status_code == 200  # alive: nothing to restart
            r = _get(port, "/readyz")
            assert r.status_code == 503, r.text
            assert r.json()["checks"]["catalog"] != "ok"
            # no answer from an index that was never built
            assert _get(port, "/dicomweb/studies", token).status_code == 503
            wait_for(lambda: out.has(NOT_READY), 30, "the not-ready warning")
            arrive()
            wait_for(lambda: _get(port, "/readyz").status_code == 200, 60, "ready")
            assert _get(port, "/dicomweb/studies", token).status_code in (200, 204)
            assert proc.poll() is None
        finally:
            log = _stop(proc, out)
    assert proc.returncode == 0, log
    _says_once(log)


@pytest.mark.parametrize("delay", DELAYS)
def test_sync_agent_waits_for_its_store_and_says_so_once(tmp_path: Path, delay: str) -> None:
    with late_store(delay) as (emu, arrive):
        store_url = f"gs://{BUCKET}"
        with site(tmp_path, store_url, emulator_host=emu.url) as s:
            study = s.add_study(instances=2)
            proc = start_agent_process(write_config(tmp_path, s.data))
            out = Output(proc)
            try:
                wait_for(lambda: out.has(NOT_READY) or proc.poll() is not None, 60, "warning")
                assert proc.poll() is None, out.text()
                assert s.states(study) == {"cached": 2}  # nothing failed against no bucket
                arrive()
                wait_for(lambda: s.states(study) == {"synced": 2}, 60, "uploaded")
                assert proc.poll() is None
            finally:
                log = _stop(proc, out)
    assert proc.returncode == 0, log
    _says_once(log)
