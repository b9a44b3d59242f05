"""`hpacs-edge serve` stops within 2 s of SIGTERM when idle (`make up` kills after 10 s).

It used to take ~10.8 s whenever anything had opened a TCP connection to the DIMSE port without
sending an A-ASSOCIATE-RQ (a port probe, `nc -z`, a load balancer's check): pynetdicom's
acceptor thread waits for the request for `association_timeout_s` (60 s) even after the peer
has gone, and stop() waited 10 s for it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.server import EdgeServer
from tests.support.edge import write_toml
from tests.support.net import free_port, port_open, wait_for

ROOT = Path(__file__).resolve().parents[1]
STOP_WITHIN_S = 2.0


def _family(pid: int) -> list[int]:
    """The process and its children (the acceptor processes of edge.acceptors = "auto")."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(c) for c in task.read_text().split()]
        except FileNotFoundError:
            continue
    return [pid, *kids]


def _accepted(pid: int, client: socket.socket) -> bool:
    """A server process holds the accepted end of `client`'s connection (/proc, no guess)."""
    return any(_holds(p, client) for p in _family(pid))


def _holds(pid: int, client: socket.socket) -> bool:
    ours = client.getsockname()[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[2].split(":")[1], 16) == ours:  # remote address of the server's end
            inodes.add(f[9])
    links = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return any(f"socket:[{i}]" in links for i in inodes)


def _config(tmp_path: Path, dimse_port: int, http_port: int) -> Path:
    (tmp_path / "bucket").mkdir()
    return write_toml(
        tmp_path / "hpacs.toml",
        {
            "edge": {
                "data_dir": str(tmp_path / "edge"),
                "host": "127.0.0.1",
                "port": dimse_port,
                "http_host": "127.0.0.1",
                "http_port": http_port,
                "min_free_bytes": 0,
                "import_dir": str(tmp_path / "import"),  # hot folder and its observer too
                "tls": {"port": 0},
            },
            "sync": {"store_url": f"file://{tmp_path / 'bucket'}"},
        },
    )


def _burst(pid: int) -> None:
    """SIGTERMs spread over about a second: some land while the previous one is handled (the
    handler used to call Event.set(), which deadlocks when signals nest)."""
    for _ in range(2000):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        time.sleep(0.0005)  # the spacing of the injected signals, not a synchronisation


@pytest.mark.parametrize("dimse_peer", ["none", "probe_closed", "connection_held", "sigterm_burst"])
def test_serve_stops_within_2_s_of_sigterm_when_idle(tmp_path: Path, dimse_peer: str) -> None:
    dimse_port, http_port = free_port(), free_port()
    config = _config(tmp_path, dimse_port, http_port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    held: socket.socket | None = None
    try:
        # HTTP opens last in serve(): once it answers, every part of the node is running
        wait_for(lambda: port_open(http_port), timeout_s=60, what="edge http")
        if dimse_peer not in ("none", "sigterm_burst"):
            conn = socket.create_connection(("127.0.0.1", dimse_port), timeout=5)
            held = conn
            wait_for(lambda: _accepted(proc.pid, conn), timeout_s=30, what="accept")
        if dimse_peer == "probe_closed" and held is not None:
            held.close()
            held = None
        t0 = time.monotonic()
        if dimse_peer == "sigterm_burst":
            threading.Thread(target=_burst, args=(proc.pid,), daemon=True).start()
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        took = time.monotonic() - t0
    finally:
        if held is not None:
            held.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # a SIGTERM that lands after the graceful stop, during the interpreter's exit, ends the
    # process by the signal's default action: still a clean stop
    clean = (0, -signal.SIGTERM) if dimse_peer == "sigterm_burst" else (0,)
    assert proc.returncode in clean, err
    assert "edge node stopped" in err
    assert took < STOP_WITHIN_S, f"stopped after {took:.2f} s"


def _association_threads(server: EdgeServer) -> list[threading.Thread]:
    """The connection threads of the edge's acceptor (edge/dimse/acceptor.py: one per socket)."""
    return [t for t in threading.enumerate() if t.name == "dimse" and t.is_alive()]


def test_a_port_probe_that_went_away_holds_no_thread(edge: EdgeServer) -> None:
    """A connection closed before its A-ASSOCIATE-RQ frees its acceptor thread at once,
    not after association_timeout_s (60 s): probes must not pile up threads or delay stop."""
    conn = socket.create_connection(("127.0.0.1", edge.ports[0]), timeout=5)
    wait_for(lambda: _association_threads(edge), timeout_s=30, what="accepted")
    conn.close()
    wait_for(lambda: not _association_threads(edge), timeout_s=5, what="probe thread gone")
