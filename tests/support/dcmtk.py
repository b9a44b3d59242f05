"""Run DCMTK tools as the real peer, with TCP_NODELAY and a timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.net import port_open, wait_for


def require_dcmtk() -> None:
    if shutil.which("storescu") is None:
        pytest.fail("DCMTK is not installed: `make test` installs Debian's dcmtk")


def run(tool: str, *args: str | Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    require_dcmtk()
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run(
        [tool, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def movescu(
    port: int | str, *keys: str, model: str = "-S", timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """DCMTK movescu as MOVESCU asking the edge (HPACS) to move what `keys` match to STORESCP;
    `model` -S study root, -P patient root."""
    queries = [a for k in keys for a in ("-k", k)]
    return run(
        "movescu", model, "-aet", "MOVESCU", "-aec", "HPACS", "-aem", "STORESCP",
        *queries, "127.0.0.1", str(port), timeout=timeout,
    )  # fmt: skip


def storescp(port: int, out_dir: Path, aet: str = "STORESCP", *extra: str) -> subprocess.Popen[str]:
    """A DCMTK storescp writing every received object under out_dir (caller stops it)."""
    require_dcmtk()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.Popen(
        ["storescp", "-aet", aet, "-od", str(out_dir), "+B", *extra, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@dataclass
class Storescp:
    proc: subprocess.Popen[str]
    log: str = ""  # its output, filled in once it has stopped


@contextmanager
def running_storescp(
    port: int, out_dir: Path, aet: str = "STORESCP", *extra: str
) -> Iterator[Storescp]:
    """`storescp` listening on `port` for the block, then stopped (killed if it lingers)."""
    scp = Storescp(storescp(port, out_dir, aet, *extra))
    try:
        wait_for(lambda: port_open(port) or scp.proc.poll() is not None, 10, "storescp")
        assert scp.proc.poll() is None, scp.proc.communicate()[0]
        yield scp
    finally:
        scp.proc.terminate()
        try:
            scp.log = scp.proc.communicate(timeout=10)[0] or ""
        except subprocess.TimeoutExpired:
            scp.proc.kill()
            scp.log = scp.proc.communicate()[0] or ""
