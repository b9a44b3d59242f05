"""`make up`'s launcher (deploy/devup.py): every line printed as it arrives, and a start from
an empty var/ that brings every service up even when the object store comes late."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from tests.support.edge import write_toml
from tests.support.net import free_port, wait_for
from tests.support.output import Output

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _launch(procfile: Path, config: Path) -> tuple[subprocess.Popen[str], Output]:
    proc = subprocess.Popen(
        [sys.executable, "deploy/devup.py", "--config", str(config), "--procfile", str(procfile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    return proc, Output(proc)


def _stop(proc: subprocess.Popen[str], out: Output, timeout_s: float = 30) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return out.text()


def test_every_line_of_a_burst_is_printed_as_it_arrives(tmp_path: Path) -> None:
    """Three lines in one write, then silence: all three show at once (a buffered readline
    printed one per select() and kept the rest until the child's next write)."""
    script = tmp_path / "burst.py"
    script.write_text(
        textwrap.dedent(
            """
            import signal, sys, threading
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            sys.stdout.write("one\\ntwo\\nthree\\n")
            sys.stdout.flush()
            stop.wait()
            sys.stdout.write("stopping\\nno newline at the end")
            """
        )
    )
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"burst: {sys.executable} {script}\n")
    proc, out = _launch(procfile, tmp_path / "unused.toml")
    try:
        wait_for(lambda: out.has("burst | three"), 30, "the whole burst")
        assert out.has("burst | one") and out.has("burst | two")
    finally:
        log = _stop(proc, out)
    assert proc.returncode == 0, log
    # what a child says while it stops is printed too, an unterminated last line included
    assert "burst | stopping\n" in log and "burst | no newline at the end\n" in log, log
    assert log.rstrip().endswith("all stopped"), log


def _site(var: Path, emulator_port: int) -> tuple[dict[str, int], dict[str, object]]:
    ports = {"dimse": free_port(), "edge_http": free_port(), "cloud": free_port()}
    emulator = f"http://127.0.0.1:{emulator_port}"
    config = {
        "edge": {
            "ae_title": "HPACS",
            "host": "127.0.0.1",
            "port": ports["dimse"],
            "data_dir": str(var / "edge"),
            "min_free_bytes": 0,
            "http_host": "127.0.0.1",
            "http_port": ports["edge_http"],
            "import_dir": str(var / "import"),
            "tls": {"port": 0},
        },
        "sync": {"store_url": "gs://hpacs-dev", "site": "dev", "emulator_host": emulator},
        "cloud": {
            "host": "127.0.0.1",
            "port": ports["cloud"],
            "store_url": "gs://hpacs-dev",
            "data_dir": str(var / "cloud"),
            "tokens_file": str(var / "cloud" / "tokens.json"),
        },
    }
    return ports, config


def _ready(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


# The object store comes late in two real ways: the emulator process starts 1.5 s late, or its
# port opens at once and its bucket 2 s later (the window the cloud API's 404 fell into).
DELAYS = ["emulator_late", "bucket_late"] * 2


@pytest.mark.parametrize("delay", DELAYS)
def test_make_up_from_an_empty_var_brings_every_service_up(tmp_path: Path, delay: str) -> None:
    var = tmp_path / "var"  # empty: nothing left by an earlier start
    emulator_port = free_port()
    ports, data = _site(var, emulator_port)
    config = write_toml(tmp_path / "hpacs.toml", data)
    if delay == "emulator_late":
        gcs = (
            f"/bin/sh -c 'sleep 1.5 && exec {sys.executable} deploy/gcs_emulator.py "
            f"--port {emulator_port} --data {var / 'gcs'} --bucket hpacs-dev'"
        )
    else:
        gcs = (
            f"{sys.executable} tests/support/late_bucket.py --port {emulator_port} "
            "--bucket hpacs-dev --after-s 2"
        )
    # the emulator last: the launcher must start it first all the same
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        f"edge: {BIN / 'hpacs-edge'} --config {{config}} serve\n"
        f"cloud: {BIN / 'hpacs-cloud'} --config {{config}} serve\n"
        f"sync: {BIN / 'hpacs-sync'} --config {{config}} run\n"
        f"gcs: {gcs}\n"
    )
    proc, out = _launch(procfile, config)
    try:
        wait_for(
            lambda: (
                (_ready(ports["edge_http"]) and _ready(ports["cloud"])) or proc.poll() is not None
            ),
            90,
            "edge and cloud ready",
        )
        wait_for(lambda: out.has("sync agent started") or proc.poll() is not None, 60, "sync")
        assert proc.poll() is None, out.text()
        assert not out.has("exited; stopping the others"), out.text()
    finally:
        log = _stop(proc, out)
    assert proc.returncode == 0, log
    started = [line.split()[1] for line in log.splitlines() if line.startswith("started ")]
    assert started[0] == "gcs" and sorted(started) == ["cloud", "edge", "gcs", "sync"], log
    assert "edge node stopped" in log and "sync agent stopped" in log, log  # stop logs shown
    assert "did not stop in time" not in log, log
    assert log.rstrip().endswith("all stopped"), log
