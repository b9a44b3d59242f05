"""Routes from two places, one table of rules: `[[routes]]` of the config and routes edited in
the console (table `routes` of the index, one JSON spec per name).

Console routes live in the index beside the config's, shown apart like nodes: the file stays
the admin's, and an edit from the console applies without a restart because every reader
(the ingest hook that queues jobs, the forwarder that sends them, in any process) asks the
table whether it changed (`RouteTable`, one small SELECT) and reloads when it did.

A route may name any registered node, from `[[nodes]]` or the registry; destinations are
checked here, where the registry is known: at serve start-up (`check_config_routes`) and when
a route is saved. A node that is the last provider of a route's destination cannot be removed.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from typing import Any

from edge.routing import Rule
from shared.config import ConfigError, RouteConfig, parse_route
from shared.errors import Conflict, InvalidField, NotFound
from shared.registry import CONFIG, REGISTRY, effective_nodes, get_node

SOURCE_CONFIG = "config"
SOURCE_CONSOLE = "console"


def route_from_json(data: Any) -> RouteConfig:
    """A route from the console's JSON body; errors name the field."""
    if not isinstance(data, dict):
        raise InvalidField("body", "a JSON object is required")
    try:
        return parse_route(data)
    except ConfigError as exc:
        raise InvalidField(exc.key.split(".")[0].split("[")[0], exc.reason) from exc


def stored_routes(conn: sqlite3.Connection) -> list[tuple[RouteConfig, float, str]]:
    """Console routes: (route, updated_at, updated_by), by name."""
    out = []
    for r in conn.execute("SELECT name, spec, updated_at, updated_by FROM routes ORDER BY name"):
        out.append((parse_route(json.loads(r["spec"])), r["updated_at"], r["updated_by"]))
    return out


def unknown_destinations(conn: sqlite3.Connection, route: RouteConfig) -> list[str]:
    nodes = effective_nodes(conn)
    return [d for d in route.destinations if d not in nodes]


def check_config_routes(conn: sqlite3.Connection, routes: list[RouteConfig]) -> None:
    """At serve start-up (after `[[nodes]]` are applied): every destination is registered."""
    for i, route in enumerate(routes):
        missing = unknown_destinations(conn, route)
        if missing:
            raise ConfigError(
                f"routes[{i}].destinations",
                f"{missing[0]!r} is not a registered node: add it to [[nodes]], or with "
                f"`hpacs-edge nodes add {missing[0]} HOST PORT` or the console's Nodes page",
            )


def save_route(
    conn: sqlite3.Connection,
    route: RouteConfig,
    config_routes: list[RouteConfig],
    by: str,
    *,
    create: bool,
) -> None:
    """Create (`create`) or replace a console route, after checking its name and destinations."""
    if any(r.name == route.name for r in config_routes):
        raise Conflict(f"route {route.name!r} comes from [[routes]] in the config file")
    exists = conn.execute("SELECT 1 FROM routes WHERE name = ?", (route.name,)).fetchone()
    if create and exists:
        raise Conflict(f"a route named {route.name!r} exists")
    if not create and not exists:
        raise NotFound(f"no console route {route.name!r}")
    missing = unknown_destinations(conn, route)
    if missing:
        raise InvalidField("destinations", f"{missing[0]!r} is not a registered node")
    spec = json.dumps(dataclasses.asdict(route), sort_keys=True)
    conn.execute(
        "INSERT INTO routes(name, spec, updated_at, updated_by) VALUES (?,?,?,?) "
        "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, "
        "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        (route.name, spec, time.time(), by),
    )


def delete_route(conn: sqlite3.Connection, name: str, config_routes: list[RouteConfig]) -> None:
    if any(r.name == name for r in config_routes):
        raise Conflict(f"route {name!r} comes from [[routes]] in the config file: edit it there")
    if conn.execute("DELETE FROM routes WHERE name = ?", (name,)).rowcount != 1:
        raise NotFound(f"no console route {name!r}")


def removal_blockers(
    conn: sqlite3.Connection, config_routes: list[RouteConfig], ae_title: str, source: str
) -> list[str]:
    """Routes that would lose their destination if this row of the registry went away (none
    when the other source also has the AE title: it stays registered)."""
    other = CONFIG if source == REGISTRY else REGISTRY
    if get_node(conn, ae_title, other) is not None:
        return []
    routes = config_routes + [r for r, _, _ in stored_routes(conn)]
    return [r.name for r in routes if ae_title in r.destinations]


def listing(conn: sqlite3.Connection, config_routes: list[RouteConfig]) -> list[dict[str, Any]]:
    """Both kinds for the console, config first; `unknown` lists unregistered destinations."""
    out = []
    for rc in config_routes:
        out.append(_as_dict(conn, rc, SOURCE_CONFIG, None, ""))
    for rc, at, by in stored_routes(conn):
        out.append(_as_dict(conn, rc, SOURCE_CONSOLE, at, by))
    return out


def _as_dict(
    conn: sqlite3.Connection, rc: RouteConfig, source: str, at: float | None, by: str
) -> dict[str, Any]:
    return dataclasses.asdict(rc) | {
        "source": source,
        "updated_at": at,
        "updated_by": by,
        "unknown": unknown_destinations(conn, rc),
    }


class RouteTable:
    """The rules in force: the config's routes plus the console's, reloaded when the `routes`
    table changes (count and newest `updated_at`, one indexed SELECT per call)."""

    def __init__(self, config_routes: list[RouteConfig]) -> None:
        self.config_routes = list(config_routes)
        self._lock = threading.Lock()
        self._version: tuple[int, float] | None = None
        self._routes: dict[str, RouteConfig] = {r.name: r for r in config_routes}
        self._rules: list[Rule] = [Rule.from_config(r) for r in config_routes]

    def refresh(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT count(*), coalesce(max(updated_at), 0) FROM routes").fetchone()
        version = (int(row[0]), float(row[1]))
        with self._lock:
            if version == self._version:
                return
        stored = [r for r, _, _ in stored_routes(conn)]
        routes = {r.name: r for r in stored} | {r.name: r for r in self.config_routes}
        rules = [Rule.from_config(r) for r in routes.values()]
        with self._lock:
            self._version, self._routes, self._rules = version, routes, rules

    def rules(self, conn: sqlite3.Connection) -> list[Rule]:
        self.refresh(conn)
        with self._lock:
            return self._rules

    def route(self, name: str) -> RouteConfig | None:
        with self._lock:
            return self._routes.get(name)

    def limits(self) -> dict[str, int]:
        """Destination -> concurrent batches allowed (the largest `concurrency` naming it)."""
        out: dict[str, int] = {}
        with self._lock:
            for r in self._routes.values():
                for dest in r.destinations:
                    out[dest] = max(out.get(dest, 1), r.concurrency)
        return out
