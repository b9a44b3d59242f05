"""An edge with its HTTP side (console, DICOMweb, viewer) on free ports, users of every role, its
routing attached as `serve` does, and a file:// bucket for the sync agent and recall."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from edge.forwarder import attach_routing
from edge.http import EdgeHttp
from edge.server import EdgeServer
from edge.users import add_user
from tests.support.console import TOKEN, running_http
from tests.support.edge import edge_config, running_edge
from tests.support.net import free_port
from tests.support.sync import sync_config

PASSWORD = "correct horse battery"
ROLES = ("admin", "technician", "viewer")


@dataclass
class EdgeWeb:
    edge: EdgeServer
    http: EdgeHttp
    data: dict[str, Any]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicomweb"

    @property
    def token_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def session(self, role: str) -> requests.Session:
        """Signed in as the user named after `role`, with the Origin a browser sends."""
        s = requests.Session()
        s.headers["Origin"] = self.url
        r = s.post(self.url + "/login", json={"user": role, "password": PASSWORD}, timeout=30)
        assert r.status_code == 200, r.text
        return s


def edge_web_config(tmp: Path, **edge: Any) -> dict[str, Any]:
    """An edge config with HTTP on a free port and a sync section whose evictor evicts
    everything it may (watermarks of one byte) when a test runs it."""
    routes = edge.pop("routes", [])
    data = edge_config(tmp, http_port=free_port(), **edge)
    data["sync"] = sync_config(
        tmp,
        f"file://{tmp / 'bucket'}",
        cache_high_watermark="1B",
        cache_low_watermark="1B",
    )["sync"]
    if routes:
        data["routes"] = routes
    return data


@contextmanager
def running_edge_web(data: dict[str, Any]) -> Iterator[EdgeWeb]:
    with running_edge(data) as edge:
        attach_routing(edge.ingestor, edge.cfg.routes)  # as `hpacs-edge serve` does
        with edge.db.write() as conn:
            for role in ROLES:
                add_user(conn, role, role, PASSWORD)
        with running_http(edge) as http:
            yield EdgeWeb(edge, http, data)
