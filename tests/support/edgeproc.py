"""`hpacs-edge serve` as a real process on a free port: its output in a log file
(`edge_process`), or read from its pipe line by line (`piped_edge`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from shared.config import load_config
from tests.support.edge import write_toml
from tests.support.net import port_open, wait_for

ROOT = Path(__file__).resolve().parents[2]

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


class PipedEdge:
    """A serving edge whose log (stderr) a thread reads into `lines` as it comes; a line can
    trail what caused it, so tests poll `lines` or `text()` with a deadline."""

    def __init__(self, proc: subprocess.Popen[str], data: dict[str, Any]) -> None:
        self.proc = proc
        self.port: int = data["edge"]["port"]
        self.data_dir = Path(data["edge"]["data_dir"])
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


E = TypeVar("E", bound=PipedEdge)


@contextmanager
def piped_edge(
    tmp_path: Path, data: dict[str, Any], kind: Callable[[subprocess.Popen[str], dict[str, Any]], E]
) -> Iterator[E]:
    """`hpacs-edge serve` on `data` (written to tmp_path/hpacs.toml) until it says it is ready;
    stopped with SIGTERM at exit unless the test ended it itself."""
    config = write_toml(tmp_path / "hpacs.toml", data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    e = kind(proc, data)
    try:
        wait_for(lambda: "edge node ready" in e.text() or proc.poll() is not None, 60, "edge")
        assert proc.poll() is None, e.text()
        yield e
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
