"""The node registry: DICOM peers, where they are, and what they may do.

Nodes come from `[[nodes]]` in the config (source `config`) and from the CLI (source `cli`);
both live in the index so a running edge sees CLI changes at the next association.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from shared.config import PERMISSIONS, NodeConfig
from shared.errors import BadRequest
from shared.uids import is_valid_ae_title


@dataclass(frozen=True)
class Node:
    ae_title: str
    host: str
    port: int
    tls: bool = False
    permissions: frozenset[str] = field(default_factory=frozenset)
    max_associations: int = 0
    source: str = "cli"

    def may(self, permission: str) -> bool:
        return permission in self.permissions

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of a node, one for the console API and the config backup (a restore
        reads back what the console shows)."""
        return {
            "ae_title": self.ae_title,
            "host": self.host,
            "port": self.port,
            "tls": self.tls,
            "permissions": sorted(self.permissions),
            "max_associations": self.max_associations,
            "source": self.source,
        }


def _row_to_node(row: sqlite3.Row) -> Node:
    perms = frozenset(p for p in row["permissions"].split(",") if p)
    return Node(
        ae_title=row["ae_title"],
        host=row["host"],
        port=row["port"],
        tls=bool(row["tls"]),
        permissions=perms,
        max_associations=row["max_associations"],
        source=row["source"],
    )


def validate_node(node: Node) -> None:
    if not is_valid_ae_title(node.ae_title):
        raise BadRequest(f"not a valid AE title: {node.ae_title!r}")
    if not 1 <= node.port <= 65535:
        raise BadRequest(f"port must be 1-65535, got {node.port}")
    bad = sorted(node.permissions - set(PERMISSIONS))
    if bad:
        raise BadRequest(f"unknown permission(s) {bad}; allowed: {', '.join(PERMISSIONS)}")
    if not node.host:
        raise BadRequest("host is required")


def upsert_node(conn: sqlite3.Connection, node: Node) -> None:
    validate_node(node)
    conn.execute(
        "INSERT INTO nodes(ae_title, host, port, tls, permissions, max_associations, source, "
        "updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(ae_title) DO UPDATE SET "
        "host=excluded.host, port=excluded.port, tls=excluded.tls, "
        "permissions=excluded.permissions, max_associations=excluded.max_associations, "
        "source=excluded.source, updated_at=excluded.updated_at",
        (
            node.ae_title,
            node.host,
            node.port,
            int(node.tls),
            ",".join(sorted(node.permissions)),
            node.max_associations,
            node.source,
            time.time(),
        ),
    )


def remove_node(conn: sqlite3.Connection, ae_title: str) -> bool:
    return conn.execute("DELETE FROM nodes WHERE ae_title = ?", (ae_title,)).rowcount == 1


def get_node(conn: sqlite3.Connection, ae_title: str) -> Node | None:
    row = conn.execute("SELECT * FROM nodes WHERE ae_title = ?", (ae_title,)).fetchone()
    return _row_to_node(row) if row else None


def list_nodes(conn: sqlite3.Connection) -> list[Node]:
    return [_row_to_node(r) for r in conn.execute("SELECT * FROM nodes ORDER BY ae_title")]


def node_from_config(nc: NodeConfig) -> Node:
    return Node(
        ae_title=nc.ae_title,
        host=nc.host,
        port=nc.port,
        tls=nc.tls,
        permissions=frozenset(nc.permissions),
        max_associations=nc.max_associations,
        source="config",
    )


def apply_config_nodes(conn: sqlite3.Connection, nodes: list[NodeConfig]) -> None:
    """Make config-sourced rows equal `[[nodes]]`; CLI-added nodes are left alone."""
    wanted = {n.ae_title for n in nodes}
    for row in conn.execute("SELECT ae_title FROM nodes WHERE source = 'config'").fetchall():
        if row[0] not in wanted:
            remove_node(conn, row[0])
    for nc in nodes:
        upsert_node(conn, node_from_config(nc))


def registry_version(conn: sqlite3.Connection) -> tuple[int, float]:
    """Changes when the registry changes; cheap enough to ask at every association."""
    row = conn.execute("SELECT count(*), coalesce(max(updated_at), 0) FROM nodes").fetchone()
    return int(row[0]), float(row[1])
