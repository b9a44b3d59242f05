from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import _config as pynetdicom_config

from deploy.pgcluster import Cluster
from edge import cli as edge_cli_module
from edge.server import EdgeServer
from tests.support.console import chromium
from tests.support.edge import edge_config, running_edge
from tests.support.postgres import fresh_database, temporary_cluster

# The pynetdicom peers of the tests run in the test process, so their own logs land in the
# records the tests inspect for hpacs's lines: keep them from logging identifiers (patient
# names and IDs), as the edge's log never does. The edge itself no longer uses pynetdicom's
# DIMSE layer (edge/dimse/), so these settings touch only the test peers.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


@pytest.fixture
def edge_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """`hpacs-edge --config <config> <args>` in-process, its logging left to pytest; returns
    (exit code, stdout, stderr)."""
    monkeypatch.setattr(edge_cli_module, "setup_logging", lambda *_a, **_k: None)

    def call(config: Path, *args: str) -> tuple[int, str, str]:
        code = edge_cli_module.main(["--config", str(config), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium through Playwright, one per test module."""
    with chromium() as b:
        yield b


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[EdgeServer]:
    """A running edge node with DCMTK's default AE titles registered."""
    with running_edge(edge_config(tmp_path)) as server:
        yield server


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One temporary PostgreSQL cluster for the whole session (tests/support/postgres.py)."""
    with temporary_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest) -> str:
    """The cloud catalog of a test, once per backend: "" (a SQLite file under the data
    directory) or a fresh database of the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        return ""
    return fresh_database(request.getfixturevalue("pg_cluster"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_catalog_url(request: pytest.FixtureRequest) -> str:
    """`catalog_url` for a module-scoped cloud API (one server per module and backend)."""
    if request.param == "sqlite":
        return ""
    return fresh_database(request.getfixturevalue("pg_cluster"))
