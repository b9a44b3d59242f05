"""The node registry keeps `[[nodes]]` apart from registry rows; routes may name either.

The first test reproduces the issue's report: a node added with `nodes add`, then written into
`[[nodes]]` and taken out again, silently disappeared from the registry.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge.routestore import RouteTable, check_config_routes, removal_blockers, save_route
from shared.config import ConfigError, RouteConfig, parse_config
from shared.errors import Conflict, InvalidField
from shared.index import MIGRATIONS, Database, connect
from shared.registry import CONFIG, REGISTRY, Node, apply_config_nodes, get_node, upsert_node
from tests.support.edge import edge_config, write_toml


def _rows(out: str) -> dict[str, list[list[str]]]:
    rows: dict[str, list[list[str]]] = {}
    for line in out.splitlines()[1:]:
        if line and not line.startswith("shadowed:"):
            rows.setdefault(line.split()[0], []).append(line.split())
    return rows


def test_a_registry_node_survives_its_config_entry_coming_and_going(
    tmp_path: Path, edge_cli: Any
) -> None:
    data = edge_config(tmp_path)
    config = write_toml(tmp_path / "hpacs.toml", data)
    assert edge_cli(config, "nodes", "add", "ORTHANC", "10.0.0.9", "4242")[0] == 0
    # the admin copies it into the file, with another port
    data["nodes"].append({"ae_title": "ORTHANC", "host": "10.0.0.9", "port": 4243})
    write_toml(config, data)
    code, out, _ = edge_cli(config, "nodes", "list")
    assert code == 0
    both = _rows(out)["ORTHANC"]
    assert [r[5] for r in both] == ["config", "shadowed"]
    assert [r[2] for r in both] == ["4243", "4242"]
    assert "shadowed: a [[nodes]] entry of the same AE title is in force" in out
    # ... and takes it out again: the registry node is still there, in force again
    data["nodes"].pop()
    write_toml(config, data)
    code, out, _ = edge_cli(config, "nodes", "list")
    assert _rows(out)["ORTHANC"] == [
        ["ORTHANC", "10.0.0.9", "4242", "no", "0", "registry", "echo,find,get,move,store"]
    ]
    db = Database(tmp_path / "edge" / "index.sqlite")
    try:
        node = get_node(db.reader(), "ORTHANC")
        assert node is not None and (node.port, node.source, node.added_by) == (
            4242,
            REGISTRY,
            "cli",
        )
    finally:
        db.close()


def test_nodes_remove_takes_the_registry_row_and_refuses_a_config_one(
    tmp_path: Path, edge_cli: Any
) -> None:
    data = edge_config(tmp_path)
    config = write_toml(tmp_path / "hpacs.toml", data)
    code, _, err = edge_cli(config, "nodes", "remove", "STORESCU")
    assert code == 1 and "comes from [[nodes]]" in err
    assert edge_cli(config, "nodes", "add", "STORESCU", "10.1.1.1", "104")[0] == 0
    assert edge_cli(config, "nodes", "remove", "STORESCU")[:2] == (0, "removed STORESCU\n")
    code, out, _ = edge_cli(config, "nodes", "list")
    assert [r[5] for r in _rows(out)["STORESCU"]] == ["config"]


def test_upgrade_keeps_rows_and_marks_old_cli_rows_as_registry(tmp_path: Path) -> None:
    """An index of the previous schema (version 4) keeps every node across migration 5."""
    path = tmp_path / "old.sqlite"
    conn = connect(path)
    for n, sql in enumerate(MIGRATIONS[:4], start=1):
        for stmt in filter(None, (s.strip() for s in sql.split(";"))):
            conn.execute(stmt)
        conn.execute(f"PRAGMA user_version={n}")
    conn.execute(
        "INSERT INTO nodes(ae_title, host, port, tls, permissions, max_associations, source, "
        "updated_at) VALUES ('CT01','10.0.0.5',104,0,'store',0,'cli',1), "
        "('WS01','10.0.0.6',104,1,'find,move',2,'config',1), "
        "('R01','10.0.0.7',104,0,'store',0,'restore',1)"
    )
    conn.close()
    db = Database(path)
    try:
        got = {n.ae_title: (n.source, n.added_by) for n in _all(db.reader())}
        assert got == {
            "CT01": (REGISTRY, "cli"),
            "WS01": (CONFIG, ""),
            "R01": (REGISTRY, "restore"),
        }
    finally:
        db.close()


def _all(conn: sqlite3.Connection) -> list[Node]:
    from shared.registry import list_nodes

    return list_nodes(conn)


def test_routes_may_name_registry_nodes_checked_where_the_registry_is_known(
    tmp_path: Path,
) -> None:
    cfg = parse_config({"routes": [{"name": "to-orthanc", "destinations": ["ORTHANC"]}]})
    db = Database(tmp_path / "index.sqlite")
    try:
        with db.write() as conn, pytest.raises(ConfigError) as err:
            check_config_routes(conn, cfg.routes)
        assert str(err.value).startswith(
            "routes[0].destinations: 'ORTHANC' is not a registered node"
        )
        with db.write() as conn:
            upsert_node(conn, Node("ORTHANC", "127.0.0.1", 4242, source=REGISTRY))
            check_config_routes(conn, cfg.routes)  # now it is
            assert removal_blockers(conn, cfg.routes, "ORTHANC", REGISTRY) == ["to-orthanc"]
            apply_config_nodes(conn, parse_config({"nodes": [_orthanc()]}).nodes)
            # a config row of the same AE title keeps the destination registered
            assert removal_blockers(conn, cfg.routes, "ORTHANC", REGISTRY) == []
    finally:
        db.close()


def _orthanc() -> dict[str, Any]:
    return {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}


def test_console_routes_are_checked_and_picked_up_without_restart(tmp_path: Path) -> None:
    config_routes = [RouteConfig(name="ct", destinations=["PEER"], modality="CT")]
    db = Database(tmp_path / "index.sqlite")
    table = RouteTable(config_routes)
    try:
        with db.write() as conn:
            upsert_node(conn, Node("PEER", "127.0.0.1", 104))
            assert [r.name for r in table.rules(conn)] == ["ct"]
            with pytest.raises(InvalidField) as bad:
                save_route(conn, RouteConfig("mr", ["NOBODY"]), config_routes, "t", create=True)
            assert bad.value.field == "destinations"
            with pytest.raises(Conflict):
                save_route(conn, RouteConfig("ct", ["PEER"]), config_routes, "t", create=True)
            mr = RouteConfig("mr", ["PEER"], modality="MR")
            save_route(conn, mr, config_routes, "t", create=True)
        names = sorted(r.name for r in table.rules(db.reader()))
        assert names == ["ct", "mr"]
        assert table.limits() == {"PEER": 1}
    finally:
        db.close()
