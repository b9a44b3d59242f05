"""`hpacs-edge --config F nodes add|list|remove|echo` and `studies`.

Most calls run `edge.cli.main` in-process (fast); one goes through the installed entry point.
The echo peer is a real DCMTK storescp on a free port.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edge.cli
from edge.server import EdgeServer
from shared.synthetic import StudySpec, write_study
from tests.support.dcmtk import run, running_storescp
from tests.support.edge import cli, edge_config, running_edge, write_toml
from tests.support.net import free_port


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_toml(tmp_path / "hpacs.toml", edge_config(tmp_path))


@pytest.fixture
def hpacs(config: Path, edge_cli: Any) -> Any:
    """The CLI on this module's config (conftest's edge_cli)."""
    return functools.partial(edge_cli, config)


@pytest.fixture
def echo_peer(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    with running_storescp(port, tmp_path / "scp"):
        yield port


def test_nodes_add_list_remove(hpacs: Any) -> None:
    code, out, _ = hpacs("nodes", "add", "CT01", "10.0.0.5", "104", "--permissions", "echo,store")
    assert code == 0 and out.strip() == "registered CT01 10.0.0.5:104 echo,store"
    code, out, _ = hpacs("nodes", "add", "WS01", "*", "11112", "--tls", "--max-associations", "2")
    assert code == 0
    code, out, _ = hpacs("nodes", "list")
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert lines["CT01"] == ["CT01", "10.0.0.5", "104", "no", "0", "registry", "echo,store"]
    assert lines["WS01"][:6] == ["WS01", "*", "11112", "yes", "2", "registry"]
    assert lines["STORESCU"][5] == "config"  # [[nodes]] from the config file
    code, out, _ = hpacs("nodes", "add", "CT01", "10.0.0.6", "104", "--permissions", "echo")
    assert code == 0
    code, out, _ = hpacs("nodes", "list")
    assert "10.0.0.6" in out and "10.0.0.5" not in out
    assert hpacs("nodes", "remove", "CT01")[:2] == (0, "removed CT01\n")
    code, _, err = hpacs("nodes", "remove", "CT01")
    assert code == 1 and "no node 'CT01'" in err
    assert "CT01" not in hpacs("nodes", "list")[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["BAD\\AE", "h", "104"], "not a valid AE title"),
        (["CT01", "h", "70000"], "port: must be 1-65535, got 70000"),
        (["CT01", "h", "104", "--permissions", "echo,write"], "unknown permission(s) ['write']"),
    ],
)
def test_nodes_add_refuses_bad_input(hpacs: Any, args: list[str], message: str) -> None:
    code, _, err = hpacs("nodes", "add", *args)
    assert code == 1
    assert message in err


def test_nodes_echo_prints_status_and_round_trip(hpacs: Any, echo_peer: int) -> None:
    assert hpacs("nodes", "add", "STORESCP", "127.0.0.1", str(echo_peer))[0] == 0
    code, out, _ = hpacs("nodes", "echo", "STORESCP")
    assert code == 0, out
    assert re.fullmatch(
        rf"STORESCP 127\.0\.0\.1:{echo_peer} success status=0x0000 rtt_ms=\d+\.\d\n", out
    )


def test_nodes_echo_reports_failure(hpacs: Any) -> None:
    dead = free_port()
    assert hpacs("nodes", "add", "GONE", "127.0.0.1", str(dead))[0] == 0
    code, out, _ = hpacs("nodes", "echo", "GONE", "--timeout", "2")
    assert code == 1
    assert "status=-" in out and "no association" in out
    code, _, err = hpacs("nodes", "echo", "NOBODY")
    assert code == 1 and "no node 'NOBODY'" in err


def test_entry_point_echo(hpacs: Any, config: Path, echo_peer: int) -> None:
    """The installed console script, once (process start-up is the slow part)."""
    assert hpacs("nodes", "add", "PEER", "127.0.0.1", str(echo_peer))[0] == 0
    r = cli(config, "nodes", "echo", "PEER")
    assert r.returncode == 0, r.stderr
    assert "success status=0x0000 rtt_ms=" in r.stdout


def test_config_error_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[edge]\nport = 70000\n")
    assert edge.cli.main(["--config", str(bad), "studies"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "hpacs-edge: config error: edge.port: must be 1-65535, got 70000 (or 0 to disable)\n"
    )


def test_studies_lists_the_index(hpacs: Any, config: Path, tmp_path: Path) -> None:
    code, out, _ = hpacs("studies")
    assert code == 0 and len(out.splitlines()) == 1  # header only
    import tomllib

    data = tomllib.loads(config.read_text())
    files = write_study(
        StudySpec(series_count=2, instances_per_series=3, study_date="20250102", modality="MR"),
        tmp_path / "in",
    )
    server: EdgeServer
    with running_edge(data) as server:
        r = run(
            "storescu", "-aet", "STORESCU", "-aec", "HPACS", "127.0.0.1", server.ports[0], *files
        )
        assert r.returncode == 0, r.stderr
        study_uid = server.db.reader().execute("SELECT study_uid FROM studies").fetchone()[0]
    code, out, _ = hpacs("studies")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["STUDY", "INSTANCE", "UID", "DATE", "MODALITY", "COUNT", "STATE"]
    assert row.split() == [study_uid, "20250102", "MR", "6", "cached"]


def test_config_nodes_cannot_be_removed_from_the_cli(hpacs: Any) -> None:
    code, _, err = hpacs("nodes", "remove", "STORESCU")
    assert code == 1 and "comes from [[nodes]]" in err
    assert "STORESCU" in hpacs("nodes", "list")[1]
