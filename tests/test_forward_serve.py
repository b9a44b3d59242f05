"""`hpacs-edge serve` end to end: a file dropped in the hot folder is routed to storescp,
and `routes list` shows the queue; `routes retry` requeues the dead letter."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from shared.synthetic import StudySpec, write_study
from tests.support.dcmtk import storescp
from tests.support.edge import cli
from tests.support.net import free_port, port_open, wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    scp_port, edge_port = free_port(), free_port()
    config = tmp_path / "hpacs.toml"
    config.write_text(
        f"""
[edge]
host = "127.0.0.1"
port = {edge_port}
http_port = 0
data_dir = "{tmp_path / "edge"}"
min_free_bytes = 0
import_dir = "{tmp_path / "import"}"
import_settle_s = 0.2
[edge.tls]
port = 0

[[nodes]]
ae_title = "ARCHIVE"
host = "127.0.0.1"
port = {scp_port}

[[nodes]]
ae_title = "NOWHERE"
host = "127.0.0.1"
port = {free_port()}

[[routes]]
name = "to-archive"
modality = "CT"
destinations = ["ARCHIVE"]
backoff_initial_s = 0.05

[[routes]]
name = "to-nowhere"
destinations = ["NOWHERE"]
max_attempts = 1
"""
    )
    scp = storescp(scp_port, tmp_path / "archive", "ARCHIVE")
    log = (tmp_path / "edge.log").open("w")
    edge = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--config", str(config), "serve"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: port_open(edge_port) or edge.poll() is not None, 30, "edge up")
        assert edge.poll() is None, (tmp_path / "edge.log").read_text()
        wait_for(lambda: port_open(scp_port), 10, "storescp up")
        yield config, edge_port
    finally:
        edge.send_signal(signal.SIGTERM)
        try:
            edge.wait(20)
        except subprocess.TimeoutExpired:
            edge.kill()
            edge.wait()
        scp.terminate()
        scp.wait(10)
        log.close()


def test_hot_folder_file_is_routed_by_serve(tmp_path: Path, site: tuple[Path, int]) -> None:
    config, _ = site
    src = write_study(StudySpec(instances_per_series=1), tmp_path / "s")[0]
    shutil.copy(src, tmp_path / "import" / "ct.dcm")
    archive = tmp_path / "archive"
    wait_for(lambda: any(archive.iterdir()), 30, "forwarded to storescp")
    got = pydicom.dcmread(next(archive.iterdir()))
    assert got.SOPInstanceUID == pydicom.dcmread(src).SOPInstanceUID
    assert (tmp_path / "import" / "done" / "ct.dcm").exists()

    def dead_listed() -> bool:
        out = cli(config, "routes", "list").stdout
        return "to-nowhere" in out and "dead" in out and "gave up after 1 attempts" in out

    wait_for(dead_listed, 30, "dead letter listed")
    listed = cli(config, "routes", "list").stdout
    assert "to-archive       ARCHIVE          sent" in listed
    r = cli(config, "routes", "retry", "--route", "to-nowhere")
    assert r.returncode == 0 and "requeued 1 dead forward job(s)" in r.stdout
