"""Association admission and service permissions, against a real edge on a free port."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.access import (
    RJ_CALLED_AE_NOT_RECOGNIZED,
    RJ_CALLING_AE_NOT_RECOGNIZED,
    RJ_LOCAL_LIMIT_EXCEEDED,
    decide,
    host_matches,
)
from edge.server import EdgeServer
from shared.errors import REFUSED_NOT_AUTHORIZED, SUCCESS
from shared.registry import Node
from shared.synthetic import StudySpec, iter_study
from tests.support.edge import association, cli, edge_config, running_edge, write_toml
from tests.support.net import wait_for

ALL = ["echo", "store", "find", "move", "get", "commit"]


def _node(ae: str, host: str = "127.0.0.1", perms: list[str] = ALL, limit: int = 0) -> dict:
    return {
        "ae_title": ae,
        "host": host,
        "port": 104,
        "permissions": perms,
        "max_associations": limit,
    }


NODES = [
    _node("CT01"),
    _node("FAR01", host="10.255.0.1"),
    _node("NAMED", host="localhost"),
    _node("ANYWHERE", host="*"),
    _node("ONEONLY", limit=1),
    _node("ECHOONLY", perms=["echo"]),
    _node("STOREONLY", perms=["store"]),
    _node("SECOND"),
]


@pytest.fixture
def config_data(tmp_path: Path) -> dict[str, Any]:
    return edge_config(tmp_path, nodes=NODES, max_associations=3)


@pytest.fixture
def server(config_data: dict[str, Any]) -> Iterator[EdgeServer]:
    with running_edge(config_data) as srv:
        yield srv


def _rejected_log(caplog: pytest.LogCaptureFixture, ae: str) -> str:
    lines = [
        r.getMessage()
        for r in caplog.records
        if "association rejected" in r.getMessage() and f"calling_ae={ae} " in r.getMessage()
    ]
    assert lines, f"no rejection logged for {ae}"
    return lines[-1]


def test_unknown_calling_ae_is_rejected_and_logged(
    server: EdgeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with association(server.ports[0], "INTRUDER") as assoc:
        assert assoc.is_rejected
        assert assoc.rejection == RJ_CALLING_AE_NOT_RECOGNIZED == (1, 1, 3)
    line = _rejected_log(caplog, "INTRUDER")
    assert "peer=127.0.0.1" in line and "reason=unknown calling AE" in line
    assert server.active_associations() == 0
    kinds = server.db.reader().execute("SELECT kind, calling_ae FROM events").fetchall()
    assert [tuple(k) for k in kinds] == [("association_rejected", "INTRUDER")]


def test_known_ae_from_the_wrong_address_is_rejected(
    server: EdgeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with association(server.ports[0], "FAR01") as assoc:
        assert assoc.is_rejected
        assert assoc.rejection == RJ_CALLING_AE_NOT_RECOGNIZED
    line = _rejected_log(caplog, "FAR01")
    assert "peer=127.0.0.1" in line and "10.255.0.1" in line


@pytest.mark.parametrize("ae", ["CT01", "NAMED", "ANYWHERE"])
def test_known_ae_from_its_address_is_accepted(server: EdgeServer, ae: str) -> None:
    with association(server.ports[0], ae) as assoc:
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == SUCCESS


def test_called_ae_checked_when_switched_on(
    server: EdgeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with association(server.ports[0], "CT01", called_ae="ANY-SCP") as assoc:
        assert assoc.is_rejected
        assert assoc.rejection == RJ_CALLED_AE_NOT_RECOGNIZED == (1, 1, 7)
    assert "called AE 'ANY-SCP'" in _rejected_log(caplog, "CT01")


def test_called_ae_ignored_when_switched_off(tmp_path: Path) -> None:
    data = edge_config(tmp_path, nodes=NODES, check_called_ae=False)
    with running_edge(data) as srv, association(srv.ports[0], "CT01", called_ae="ANY-SCP") as a:
        assert a.is_established


def test_per_node_limit_rejects_not_queues(
    server: EdgeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = server.ports[0]
    with association(port, "ONEONLY") as first:
        assert first.is_established
        with association(port, "ONEONLY") as second:
            assert second.is_rejected
            assert second.rejection == RJ_LOCAL_LIMIT_EXCEEDED == (2, 3, 2)
        assert "node association limit 1" in _rejected_log(caplog, "ONEONLY")
        with association(port, "CT01") as other:  # other nodes are unaffected
            assert other.is_established
        assert int(first.send_c_echo().Status) == SUCCESS
    wait_for(lambda: server.active_associations() == 0, what="association counted out")
    with association(port, "ONEONLY") as again:
        assert again.is_established


def test_global_limit_rejects_not_queues(
    server: EdgeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = server.ports[0]
    with (
        association(port, "CT01") as a,
        association(port, "SECOND") as b,
        association(port, "ANYWHERE") as c,
    ):
        assert a.is_established and b.is_established and c.is_established
        assert server.active_associations() == 3
        with association(port, "NAMED") as over:
            assert over.is_rejected
            assert over.rejection == RJ_LOCAL_LIMIT_EXCEEDED
        assert "global association limit 3" in _rejected_log(caplog, "NAMED")
        assert server.active_associations() == 3
    wait_for(lambda: server.active_associations() == 0, what="associations counted out")


def test_service_without_permission_is_refused(
    server: EdgeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ds = next(iter_study(StudySpec(instances_per_series=1)))
    with association(server.ports[0], "ECHOONLY") as assoc:
        assert int(assoc.send_c_echo().Status) == SUCCESS
        assert int(assoc.send_c_store(ds).Status) == REFUSED_NOT_AUTHORIZED
    with association(server.ports[0], "STOREONLY") as assoc:
        assert int(assoc.send_c_echo().Status) == REFUSED_NOT_AUTHORIZED
        assert int(assoc.send_c_store(ds).Status) == SUCCESS
    refused = [r.getMessage() for r in caplog.records if "service refused" in r.getMessage()]
    assert any("calling_ae=ECHOONLY" in m and "service=store" in m for m in refused)
    assert any("calling_ae=STOREONLY" in m and "service=echo" in m for m in refused)
    rows = server.db.reader().execute("SELECT calling_ae FROM instances").fetchall()
    assert [r[0] for r in rows] == ["STOREONLY"]


def test_cli_node_changes_apply_without_restart(
    server: EdgeServer, config_data: dict[str, Any], tmp_path: Path
) -> None:
    config = write_toml(tmp_path / "hpacs.toml", config_data)
    port = server.ports[0]
    with association(port, "NEWCOMER") as assoc:
        assert assoc.rejection == RJ_CALLING_AE_NOT_RECOGNIZED
    r = cli(config, "nodes", "add", "NEWCOMER", "127.0.0.1", "11119", "--permissions", "echo")
    assert r.returncode == 0, r.stderr
    with association(port, "NEWCOMER") as assoc:
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == SUCCESS
    r = cli(config, "nodes", "add", "NEWCOMER", "10.255.0.2", "11119", "--permissions", "echo")
    assert r.returncode == 0, r.stderr
    with association(port, "NEWCOMER") as assoc:
        assert assoc.rejection == RJ_CALLING_AE_NOT_RECOGNIZED
    r = cli(config, "nodes", "remove", "NEWCOMER")
    assert r.returncode == 0, r.stderr
    with association(port, "NEWCOMER") as assoc:
        assert assoc.rejection == RJ_CALLING_AE_NOT_RECOGNIZED


# ---- the pure decision, table-driven -------------------------------------------------------
N = Node("CT01", "127.0.0.1", 104, permissions=frozenset(ALL), max_associations=2)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, (True, (0, 0, 0))),
        ({"node": None}, (False, RJ_CALLING_AE_NOT_RECOGNIZED)),
        ({"peer_ip": "10.0.0.9"}, (False, RJ_CALLING_AE_NOT_RECOGNIZED)),
        ({"peer_ip": "::ffff:127.0.0.1"}, (True, (0, 0, 0))),
        ({"called_ae": "OTHER"}, (False, RJ_CALLED_AE_NOT_RECOGNIZED)),
        ({"called_ae": "OTHER", "check_called_ae": False}, (True, (0, 0, 0))),
        ({"active_total": 5}, (False, RJ_LOCAL_LIMIT_EXCEEDED)),
        ({"active_for_node": 2}, (False, RJ_LOCAL_LIMIT_EXCEEDED)),
        ({"active_for_node": 1}, (True, (0, 0, 0))),
    ],
)
def test_decide(kw: dict[str, Any], expected: tuple[bool, tuple[int, int, int]]) -> None:
    args: dict[str, Any] = {
        "node": N,
        "calling_ae": "CT01",
        "called_ae": "HPACS",
        "our_ae": "HPACS",
        "check_called_ae": True,
        "peer_ip": "127.0.0.1",
        "node_addresses": frozenset(),
        "active_total": 0,
        "max_total": 5,
        "active_for_node": 0,
    }
    args.update(kw)
    d = decide(**args)
    assert (d.accept, d.reject) == expected
    assert d.accept or d.reason


def test_host_matches() -> None:
    assert host_matches("*", "203.0.113.9", frozenset())
    assert host_matches("ct.example", "10.0.0.5", frozenset({"10.0.0.5"}))
    assert not host_matches("ct.example", "10.0.0.6", frozenset({"10.0.0.5"}))
    assert not host_matches("10.0.0.5", "not-an-ip", frozenset())


def test_dev_config_admits_dcmtk_default_titles(tmp_path: Path) -> None:
    """`make up`'s registry: DCMTK tools work without -aet/-aec."""
    import tomllib

    from tests.support.dcmtk import run

    root = Path(__file__).resolve().parent.parent
    data = tomllib.loads((root / "deploy" / "hpacs.dev.toml").read_text())
    dev = edge_config(
        tmp_path, nodes=data["nodes"], check_called_ae=data["edge"]["check_called_ae"]
    )
    with running_edge(dev) as srv:
        r = run("echoscu", "127.0.0.1", srv.ports[0])  # calling ECHOSCU, called ANY-SCP
        assert r.returncode == 0, r.stderr
        r = run("echoscu", "-aec", "HPACS", "127.0.0.1", srv.ports[0])
        assert r.returncode == 0, r.stderr
        r = run("echoscu", "-aet", "INTRUDER", "127.0.0.1", srv.ports[0])
        assert r.returncode != 0
        assert "Association Rejected" in r.stderr and "Calling AE Title Not Recognized" in r.stderr


def test_associations_do_not_leak_index_connections(server: EdgeServer) -> None:
    """Each association runs in a new thread with its own index reader; ended threads' readers
    must be closed, or every association leaks file descriptors until the node stops."""
    import os

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    echo_only = [("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])]
    for _ in range(3):  # warm up
        with association(server.ports[0], "CT01", contexts=echo_only) as assoc:
            assoc.send_c_echo()
    before = fds()
    for _ in range(20):
        with association(server.ports[0], "CT01", contexts=echo_only) as assoc:
            assert int(assoc.send_c_echo().Status) == SUCCESS
    wait_for(lambda: server.active_associations() == 0, what="associations counted out")
    assert fds() - before < 8
