"""`hpacs-edge serve` as a real process on a free port, its output in a log file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.config import load_config
from tests.support.net import port_open, wait_for

SERVE = "import sys; from edge.cli import main; sys.exit(main())"


@contextmanager
def edge_process(
    config: Path, log: Path, code: str = SERVE, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `code` (default: the hpacs-edge entry point) with `args` then `--config C serve`;
    killed at exit if still running. Tests that need a crash point pass a wrapper as `code`."""
    port = load_config(config).edge.port
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args, "--config", str(config), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 30, "hpacs-edge to listen")
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
