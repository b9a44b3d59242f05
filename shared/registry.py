"""The node registry: DICOM peers, where they are, and what they may do.

Two kinds of rows live side by side in the index, keyed by (AE title, source):
- `config`: the `[[nodes]]` of the config file, re-applied by every start and CLI verb;
- `registry`: nodes added at run time (`hpacs-edge nodes add`, the console, a restore).

They are kept apart so that the file never touches a registry row: a node added with
`nodes add`, then written into `[[nodes]]` and taken out again, is still registered (it used to
be overwritten into a config row and then deleted with it). When both kinds name one AE title,
the config row is the one in force (the file is the deployment's explicit word) and the
registry row is shown as shadowed; it takes over again when the file drops the entry.
A running edge sees changes at the next association (`registry_version`).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from shared.config import PERMISSIONS, NodeConfig
from shared.errors import InvalidField
from shared.uids import is_valid_ae_title

CONFIG = "config"
REGISTRY = "registry"
MAX_HOST_CHARS = 253


@dataclass(frozen=True)
class Node:
    ae_title: str
    host: str
    port: int
    tls: bool = False
    permissions: frozenset[str] = field(default_factory=frozenset)
    max_associations: int = 0
    source: str = REGISTRY  # CONFIG or REGISTRY
    added_by: str = ""  # who made a registry row: "cli", "console:<user>", "restore"

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
            "added_by": self.added_by,
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
        added_by=row["added_by"],
    )


def validate_node(node: Node) -> None:
    """Every rule a node must meet; the error names the field (a form marks that input)."""
    if not is_valid_ae_title(node.ae_title):
        raise InvalidField(
            "ae_title",
            f"not a valid AE title: {node.ae_title[:40]!r} (1-16 characters, no backslash)",
        )
    if not node.host or len(node.host) > MAX_HOST_CHARS or any(c.isspace() for c in node.host):
        raise InvalidField("host", "an IP address or host name is required (* for any address)")
    if not 1 <= node.port <= 65535:
        raise InvalidField("port", f"must be 1-65535, got {node.port}")
    bad = sorted(node.permissions - set(PERMISSIONS))
    if bad:
        raise InvalidField(
            "permissions", f"unknown permission(s) {bad}; allowed: {', '.join(PERMISSIONS)}"
        )
    if not 0 <= node.max_associations <= 10_000:
        raise InvalidField("max_associations", "must be 0 (only the global limit) to 10000")


def _source(node: Node) -> str:
    return CONFIG if node.source == CONFIG else REGISTRY


def upsert_node(conn: sqlite3.Connection, node: Node) -> None:
    """Insert or update the row of `node.source` (anything but "config" is a registry row)."""
    validate_node(node)
    source = _source(node)
    # a registry row remembers who made it; an old caller's source ("restore") says it too
    legacy = node.source if node.source not in (CONFIG, REGISTRY) else ""
    added_by = "" if source == CONFIG else (node.added_by or legacy)
    conn.execute(
        "INSERT INTO nodes(ae_title, source, host, port, tls, permissions, max_associations, "
        "added_by, updated_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(ae_title, source) "
        "DO UPDATE SET host=excluded.host, port=excluded.port, tls=excluded.tls, "
        "permissions=excluded.permissions, max_associations=excluded.max_associations, "
        "added_by=excluded.added_by, updated_at=excluded.updated_at",
        (
            node.ae_title,
            source,
            node.host,
            node.port,
            int(node.tls),
            ",".join(sorted(node.permissions)),
            node.max_associations,
            added_by,
            time.time(),
        ),
    )


def remove_node(conn: sqlite3.Connection, ae_title: str, source: str = REGISTRY) -> bool:
    """Delete one row; the other source's row of the same AE title stays."""
    cur = conn.execute("DELETE FROM nodes WHERE ae_title = ? AND source = ?", (ae_title, source))
    return cur.rowcount == 1


def get_node(conn: sqlite3.Connection, ae_title: str, source: str | None = None) -> Node | None:
    """The node in force for an AE title (config over registry), or the row of `source`."""
    if source is not None:
        row = conn.execute(
            "SELECT * FROM nodes WHERE ae_title = ? AND source = ?", (ae_title, source)
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT * FROM nodes WHERE ae_title = ? ORDER BY source = 'config' DESC LIMIT 1",
            (ae_title,),
        ).fetchone()
    return _row_to_node(row) if row else None


def list_nodes(conn: sqlite3.Connection) -> list[Node]:
    """Every row of both sources, by AE title (config first)."""
    return [
        _row_to_node(r)
        for r in conn.execute("SELECT * FROM nodes ORDER BY ae_title, source = 'registry'")
    ]


def effective_nodes(conn: sqlite3.Connection) -> dict[str, Node]:
    """AE title -> the node in force."""
    out: dict[str, Node] = {}
    for n in list_nodes(conn):
        out.setdefault(n.ae_title, n)
    return out


def node_from_config(nc: NodeConfig) -> Node:
    return Node(
        ae_title=nc.ae_title,
        host=nc.host,
        port=nc.port,
        tls=nc.tls,
        permissions=frozenset(nc.permissions),
        max_associations=nc.max_associations,
        source=CONFIG,
    )


def apply_config_nodes(conn: sqlite3.Connection, nodes: list[NodeConfig]) -> None:
    """Make the config rows equal `[[nodes]]`; registry rows are never touched."""
    wanted = {n.ae_title for n in nodes}
    for row in conn.execute("SELECT ae_title FROM nodes WHERE source = 'config'").fetchall():
        if row[0] not in wanted:
            remove_node(conn, row[0], CONFIG)
    for nc in nodes:
        upsert_node(conn, node_from_config(nc))


def registry_version(conn: sqlite3.Connection) -> tuple[int, float]:
    """Changes when the registry changes; cheap enough to ask at every association."""
    row = conn.execute("SELECT count(*), coalesce(max(updated_at), 0) FROM nodes").fetchone()
    return int(row[0]), float(row[1])
