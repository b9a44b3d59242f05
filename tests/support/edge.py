"""An in-process edge node on a free port, started and stopped inside a fixture."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge.reconcile import reconcile
from edge.server import EdgeServer
from shared.config import Config, parse_config
from shared.index import Database
from shared.registry import apply_config_nodes
from tests.support.net import free_port

DCMTK_AETS = ["ECHOSCU", "STORESCU", "FINDSCU", "MOVESCU", "GETSCU"]


def edge_config(tmp_path: Path, **edge: Any) -> dict[str, Any]:
    """A config dict: free port, data under tmp_path, DCMTK's AE titles registered."""
    nodes = edge.pop("nodes", None)
    e = {
        "ae_title": "HPACS",
        "host": "127.0.0.1",
        "port": free_port(),
        "data_dir": str(tmp_path / "edge"),
        "min_free_bytes": 0,
        "tls": {"port": 0},
    }
    e.update(edge)
    if nodes is None:
        nodes = [
            {
                "ae_title": aet,
                "host": "127.0.0.1",
                "port": 104,
                "permissions": ["echo", "store", "find", "move", "get", "commit"],
            }
            for aet in DCMTK_AETS
        ]
    return {"edge": e, "nodes": nodes}


@contextmanager
def running_edge(data: dict[str, Any]) -> Iterator[EdgeServer]:
    cfg: Config = parse_config(data)
    db = Database(cfg.edge.index_path)
    with db.write() as conn:
        apply_config_nodes(conn, cfg.nodes)
    server = EdgeServer(cfg, db)
    reconcile(db, server.cache)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        db.close()
