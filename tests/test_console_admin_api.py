"""The console's admin API without a browser: validation errors name the field, nodes and
routes change the running edge, every change is an audit record in the keyed chain; the
dashboard's figures and advice; `hpacs-edge users` and the shared audit log of CLI and serve."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import edge.cli
from edge import events
from edge.audit import EdgeAudit, audit_key
from edge.troubleshoot import advice
from shared.audit_verify import verify
from shared.config import parse_config
from shared.store import open_store
from tests.support.console import call, call_json, running_http
from tests.support.edge import edge_config, running_edge, write_toml
from tests.support.net import free_port

GOOD = {"ae_title": "CT09", "host": "10.0.0.9", "port": 104, "permissions": ["echo", "store"]}


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        ({"ae_title": "BAD\\AE"}, "ae_title", "not a valid AE title"),
        ({"ae_title": "A" * 17}, "ae_title", "not a valid AE title"),
        ({"ae_title": None}, "ae_title", "required"),
        ({"host": ""}, "host", "host name is required"),
        ({"host": "two words"}, "host", "host name is required"),
        ({"port": 70000}, "port", "must be 1-65535, got 70000"),
        ({"port": "abc"}, "port", "an integer"),
        ({"port": True}, "port", "an integer"),
        ({"permissions": ["echo", "write"]}, "permissions", "unknown permission(s) ['write']"),
        ({"permissions": 7}, "permissions", "a list among"),
        ({"tls": "yes"}, "tls", "true or false"),
        ({"max_associations": -1}, "max_associations", "must be 0"),
        ({"reason": "x" * 600}, "reason", "at most 500"),
    ],
)
def test_node_validation_errors_name_the_field(
    tmp_path: Path, change: dict[str, Any], field: str, text: str
) -> None:
    data = edge_config(tmp_path, http_port=free_port())
    with running_edge(data) as edge, running_http(edge) as http:
        body = {k: v for k, v in ({**GOOD, **change}).items() if v is not None}
        status, headers, raw = call(http, "/api/nodes", method="POST", body=body)
        assert status == 400, raw
        assert headers["Content-Type"].startswith("application/problem+json")
        problem = json.loads(raw)
        assert problem["field"] == field and text in problem["detail"], problem
        assert problem["title"] == "InvalidField"


def test_nodes_and_routes_change_the_running_edge_and_are_audited(tmp_path: Path) -> None:
    data = edge_config(tmp_path, http_port=free_port())
    data["routes"] = [{"name": "cfg-route", "destinations": ["STORESCU"]}]
    with running_edge(data) as edge, running_http(edge) as http:
        assert (
            call_json(http, "/api/nodes", method="POST", body={**GOOD, "reason": "new CT"})[0]
            == 201
        )
        assert call_json(http, "/api/nodes", method="POST", body=GOOD)[0] == 409
        status, body = call_json(http, "/api/nodes/STORESCU", method="PUT", body={**GOOD})
        assert (status, body["field"]) == (400, "ae_title")  # cannot rename
        status, body = call_json(
            http, "/api/nodes/STORESCU", method="PUT", body={**GOOD, "ae_title": "STORESCU"}
        )
        assert status == 409 and "[[nodes]]" in body["detail"]
        upd = {**GOOD, "port": 105}
        assert call_json(http, "/api/nodes/CT09", method="PUT", body=upd)[1]["port"] == 105
        nodes = call_json(http, "/api/nodes")[1]
        assert [n["ae_title"] for n in nodes["registry"]] == ["CT09"]
        assert nodes["registry"][0]["added_by"] == "console:console-token"
        assert "STORESCU" in [n["ae_title"] for n in nodes["config"]]
        # route rules: a registry node is a valid destination, an unknown one names the field
        route = {"name": "to-ct09", "destinations": ["CT09"], "modality": "CT"}
        assert call_json(http, "/api/routes/rules", method="POST", body=route)[0] == 201
        bad = {"name": "nowhere", "destinations": ["NOBODY"]}
        status, body = call_json(http, "/api/routes/rules", method="POST", body=bad)
        assert (status, body["field"]) == (400, "destinations")
        status, body = call_json(http, "/api/routes/rules", method="POST", body={"name": "x"})
        assert (status, body["field"]) == (400, "destinations")
        status, body = call_json(
            http, "/api/routes/rules", method="POST", body={**route, "schedule": "soon"}
        )
        assert (status, body["field"]) == (400, "schedule")
        status, body = call_json(
            http, "/api/routes/rules", method="POST", body={**route, "name": "cfg-route"}
        )
        assert status == 409
        # a node a route still needs cannot go
        status, body = call_json(http, "/api/nodes/CT09", method="DELETE")
        assert status == 409 and "to-ct09" in body["detail"]
        rules = call_json(http, "/api/routes/rules")[1]
        assert [(r["name"], r["source"]) for r in rules] == [
            ("cfg-route", "config"),
            ("to-ct09", "console"),
        ]
        assert call_json(http, "/api/routes/rules/to-ct09", method="DELETE")[0] == 200
        assert call_json(http, "/api/nodes/CT09?reason=decommissioned", method="DELETE")[0] == 200
        audit = call_json(http, "/api/audit")[1]["events"]
    done = [(e["action"], e["target"], e["outcome"]) for e in reversed(audit)]
    assert done[:2] == [("node-add", "CT09", "ok"), ("node-add", "CT09", "error")]
    assert ("node-remove", "CT09", "error") in done and done[-1] == ("node-remove", "CT09", "ok")
    assert ("route-add", "to-ct09", "ok") in done and ("route-remove", "to-ct09", "ok") in done
    assert audit[-1]["reason"] == "new CT" and audit[0]["reason"] == "decommissioned"
    assert {e["actor"] for e in audit} == {"console-token"}
    # the records are a keyed chain, shipped to audit/<site>/ when the HTTP side stopped
    cfg = parse_config(data)
    log_dir = Path(cfg.edge.data_dir) / "audit"
    store = open_store(cfg.sync.store_url)
    assert [i.key for i in store.list(f"audit/{cfg.sync.site}/checkpoints/")]
    with open(log_dir / "audit.jsonl", "rb") as fh:
        rid = (log_dir / "replica_id").read_text()
        report = verify([("audit.jsonl", fh)], audit_key(cfg, create=False), replica=rid,
                        service=cfg.sync.site, store=store, segments=True)  # fmt: skip
    assert report.ok, report.to_json()
    assert report.records == len(audit)


def test_cli_and_serve_append_to_one_chain(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    """`hpacs-edge users add` (another process in real life) and a running edge's HTTP side
    write one unbroken chain: each append first catches up with the other's."""
    monkeypatch.setattr(edge.cli, "setup_logging", lambda *_a, **_k: None)
    data = edge_config(tmp_path, http_port=free_port())
    config = write_toml(tmp_path / "hpacs.toml", data)
    cfg = parse_config(data)
    serve_side = EdgeAudit(cfg)
    try:
        serve_side.record(action="login", actor="a")
        monkeypatch.setattr("sys.stdin", _Stdin("a long enough password\n"))
        assert (
            edge.cli.main(["--config", str(config), "users", "add", "bob", "--role", "viewer"]) == 0
        )
        serve_side.record(action="login", actor="bob")
        assert edge.cli.main(["--config", str(config), "users", "list"]) == 0
        out = capsys.readouterr().out
        assert "bob" in out and "viewer" in out
        recs = serve_side.recent()
        assert [r["seq"] for r in recs] == [3, 2, 1]
        assert recs[1]["action"] == "user-add" and recs[1]["actor"].startswith("cli:")
        store = open_store(cfg.sync.store_url)
        assert serve_side.ship(store) == 3
        report = serve_side.verify(store)
        assert report.ok, report.to_json()
    finally:
        serve_side.close()


class _Stdin:
    def __init__(self, text: str) -> None:
        self.text = text

    def isatty(self) -> bool:
        return False

    def readline(self) -> str:
        return self.text


def test_users_cli_through_the_entry_point(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "hpacs.toml", edge_config(tmp_path))
    exe = shutil.which("hpacs-edge") or str(
        Path(edge.cli.__file__).parents[1] / ".venv/bin/hpacs-edge"
    )
    run = lambda *a, stdin="": subprocess.run(  # noqa: E731
        [exe, "--config", str(config), *a], input=stdin, capture_output=True, text=True, timeout=60
    )
    r = run("users", "add", "alice", "--role", "technician", stdin="short\n")
    assert r.returncode == 1 and "password: at least 10 characters" in r.stderr
    r = run("users", "add", "alice", "--role", "technician", stdin="long enough secret\n")
    assert r.returncode == 0, r.stderr
    r = run("users", "add", "alice", "--role", "viewer", stdin="long enough secret\n")
    assert r.returncode == 1 and "exists" in r.stderr
    assert run("users", "passwd", "alice", stdin="another long secret\n").returncode == 0
    assert run("users", "remove", "alice").returncode == 0
    r = run("users", "remove", "alice")
    assert r.returncode == 1 and "no user 'alice'" in r.stderr


@pytest.mark.parametrize(
    ("kind", "detail", "action"),
    [
        ("association_rejected", "unknown calling AE", "add_node"),
        ("association_rejected", "address 10.0.0.8 is not the node's (10.0.0.7)", "edit_node"),
        ("association_rejected", "node association limit 2 reached", "edit_node"),
        ("association_rejected", "global association limit 32 reached", ""),
        ("association_rejected", "called AE 'X' is not ours", ""),
        ("store_refused", "C-STORE refused (0x0124)", "edit_node"),
        ("commitment_failed", "report for transaction 1.2 not delivered: refused", "edit_node"),
        ("commitment_failed", "2 of 5 instance(s) not committed", ""),
        ("route_dead", "route r: association refused", "retry_routes"),
        ("upload_failed", "403 forbidden", ""),
    ],
)
def test_every_error_kind_has_advice(kind: str, detail: str, action: str) -> None:
    a = advice(kind, detail, "CT01")
    assert a.text and a.action == action


def test_dashboard_compares_each_watermark_with_its_figure(tmp_path: Path) -> None:
    """Percent watermarks against the disk's used bytes, sizes against the cache bytes (the
    issue: 36.5 MB of cache was drawn against "high 243.5 GB", a percent of the disk)."""
    for high, low, basis in (("90%", "75%", "disk"), ("2GB", "1GB", "cache")):
        data = edge_config(tmp_path / basis, http_port=free_port())
        data["sync"] |= {"cache_high_watermark": high, "cache_low_watermark": low}
        with running_edge(data) as edge, running_http(edge) as http:
            events.forget()
            events.record(edge.db, "store_refused", "CT01", "10.0.0.5", "C-STORE refused (0x0124)")
            events.record(edge.db, "store_refused", "CT01", "10.0.0.5", "again, within a minute")
            before = shutil.disk_usage(edge.cfg.edge.cache_dir)
            s = call_json(http, "/api/status")[1]
            du = shutil.disk_usage(edge.cfg.edge.cache_dir)
        w = s["watermarks"]
        assert w["basis"] == basis
        if basis == "disk":
            # the disk is shared with whatever else runs: bracket the reading, with 1% slack
            used = sorted((before.total - before.free, du.total - du.free))
            slack = du.total // 100
            assert used[0] - slack <= w["compared_bytes"] <= used[1] + slack
            assert w["high"]["bytes"] == int(du.total * 0.9)
        else:
            assert w["compared_bytes"] == s["cache"]["bytes"] == 0
            assert (w["high"]["bytes"], w["low"]["bytes"]) == (2 * 10**9, 10**9)
        refused = [e for e in s["last_errors"] if e["kind"] == "store_refused"]
        assert len(refused) == 1 and refused[0]["action"] == "edit_node"  # one row a minute
        assert s["disk_probe"]["interval_s"] == 30.0
