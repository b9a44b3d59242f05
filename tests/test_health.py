"""/healthz and /readyz on the edge: alive, index writable, object store reachable."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge.http import EdgeHttp
from shared.store.gcs import GcsStore
from tests.support.console import call, call_json, running_http
from tests.support.edge import edge_config, running_edge
from tests.support.gcs import running_emulator
from tests.support.net import free_port


@contextmanager
def edge_http(tmp_path: Path, sync: dict[str, Any], **edge: Any) -> Iterator[EdgeHttp]:
    data = edge_config(tmp_path, http_port=free_port(), **edge)
    data["sync"] = sync
    with running_edge(data) as server, running_http(server) as http:
        yield http


def test_healthz_is_open_and_alive(tmp_path: Path) -> None:
    with edge_http(tmp_path, {"store_url": f"file://{tmp_path}/bucket"}) as http:
        status, body = call_json(http, "/healthz", token=None)
    assert (status, body["status"]) == (200, "alive")


def test_readyz_ready_with_writable_index_and_reachable_store(tmp_path: Path) -> None:
    (tmp_path / "bucket").mkdir()
    with edge_http(tmp_path, {"store_url": f"file://{tmp_path}/bucket"}) as http:
        status, body = call_json(http, "/readyz", token=None)
    assert status == 200, body
    assert body["checks"] == {"index": "ok", "store": "ok"}


def test_readyz_not_ready_while_the_index_is_locked(tmp_path: Path) -> None:
    (tmp_path / "bucket").mkdir()
    # The deadline bounds how long a held lock is waited for; 2 s (not 0.3 s) so that on a
    # loaded machine the store check and the final probe finish within it too.
    with edge_http(
        tmp_path, {"store_url": f"file://{tmp_path}/bucket"}, readyz_timeout_s=2.0
    ) as http:
        other = sqlite3.connect(http.cfg.edge.index_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        try:
            status, body = call_json(http, "/readyz", token=None)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert status == 503
        assert body["checks"]["index"] != "ok"
        assert body["checks"]["store"] == "ok"
        status, _ = call_json(http, "/readyz", token=None)
        assert status == 200


def test_readyz_not_ready_when_the_object_store_is_unreachable(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sync = {"store_url": "gs://hpacs-test", "emulator_host": dead}
    with edge_http(tmp_path, sync, readyz_timeout_s=1.0) as http:
        status, body = call_json(http, "/readyz", token=None)
    assert status == 503
    assert body["checks"]["index"] == "ok"
    assert body["checks"]["store"] != "ok"


def test_readyz_not_ready_while_the_bucket_does_not_exist(tmp_path: Path) -> None:
    """The emulator answers but has no bucket yet (`make up` starting): not ready. A head
    request said 'ok' here, since GCS answers 404 alike for a missing object and bucket."""
    with running_emulator(bucket="") as emu:
        sync = {"store_url": "gs://hpacs-late", "emulator_host": emu.url}
        with edge_http(tmp_path, sync, readyz_timeout_s=5.0) as http:
            status, body = call_json(http, "/readyz", token=None)
            assert status == 503, body
            assert "does not exist" in body["checks"]["store"]
            GcsStore("gs://hpacs-late", emulator_host=emu.url, timeout_s=5).create_bucket()
            status, body = call_json(http, "/readyz", token=None)
            assert status == 200, body


def test_metrics_is_open_but_api_denied_without_token(tmp_path: Path) -> None:
    with edge_http(tmp_path, {"store_url": f"file://{tmp_path}/bucket"}) as http:
        assert call(http, "/metrics", token=None)[0] == 200
        for path in ("/api/status", "/api/nodes", "/api/studies", "/api/events", "/api/routes"):
            assert call(http, path, token=None)[0] == 401, path
            assert call(http, path, token="wrong")[0] == 401, path
        status, _, body = call(http, "/api/nodes/ECHOSCU/echo", method="POST", token=None)
        assert status == 401
        assert b"Unauthenticated" in body
