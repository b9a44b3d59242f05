"""An edge's ingest side without the DIMSE server: index, cache, ingestor, routing attached."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.cache import Cache
from edge.forwarder import Forwarder, Sender, attach_routing
from edge.ingest import Ingestor
from shared.config import Config, parse_config
from shared.index import Database
from shared.registry import apply_config_nodes


@dataclass
class EdgeParts:
    cfg: Config
    db: Database
    cache: Cache
    ingestor: Ingestor


def routing_config(
    tmp_path: Path, routes: list[dict[str, Any]], nodes: list[dict[str, Any]]
) -> Config:
    return parse_config(
        {
            "edge": {"data_dir": str(tmp_path / "edge"), "min_free_bytes": 0, "port": 0},
            "nodes": nodes,
            "routes": routes,
        }
    )


@contextmanager
def edge_parts(cfg: Config) -> Iterator[EdgeParts]:
    db = Database(cfg.edge.index_path)
    with db.write() as conn:
        apply_config_nodes(conn, cfg.nodes)
    cache = Cache(cfg.edge.cache_dir)
    ingestor = Ingestor(db, cache, min_free_bytes=0)
    attach_routing(ingestor, cfg.routes)
    try:
        yield EdgeParts(cfg, db, cache, ingestor)
    finally:
        db.close()


def jobs(db: Database) -> list[dict[str, Any]]:
    rows = db.reader().execute("SELECT * FROM route_jobs ORDER BY id").fetchall()
    return [dict(r) for r in rows]


@contextmanager
def running_forwarder(
    parts: EdgeParts, send: Sender, poll_interval_s: float = 0.5
) -> Iterator[Forwarder]:
    """A started forwarder that is always stopped (its threads joined) before the index closes."""
    fwd = Forwarder(parts.db, parts.cfg, send, poll_interval_s=poll_interval_s)
    fwd.start()
    try:
        yield fwd
    finally:
        fwd.stop()
