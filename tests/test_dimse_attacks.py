"""Robust on the wire: each attack found on loopback, reproduced against `hpacs-edge serve`.

For every case: the exact abort or status the attacker gets, that a registered node's echoscu
succeeds within 2 s while the attack runs and after it, that each refusal is logged with its
peer, and that the edge's resident memory stays under 300 MB. The edge runs as its own process
(one acceptor, so its RSS is one number) with short deadlines so the test runs in seconds.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from edge.dimse import command as cmd
from shared.synthetic import StudySpec, iter_study
from tests.support.dcmtk import run
from tests.support.edge import edge_config, encoded_dataset
from tests.support.edgeproc import PipedEdge, piped_edge
from tests.support.net import port_open, wait_for
from tests.support.wire import CT, EXPLICIT, associate_rq, associated, p_data, recv_pdu

RSS_LIMIT_MB = 300
ABORT_INVALID = (0x07, b"\x00\x00\x02\x06")  # A-ABORT, provider, invalid parameter value


class Edge(PipedEdge):
    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def echo_within(self, seconds: float = 2.0) -> float:
        """Run echoscu as the registered ECHOSCU until it succeeds; the time it took."""
        start = time.monotonic()
        last = ""
        while time.monotonic() - start < seconds:
            r = run(
                "echoscu", "-to", "2", "-ta", "2", "-td", "2", "-aet", "ECHOSCU", "-aec", "HPACS",
                "127.0.0.1", str(self.port), timeout=5,
            )  # fmt: skip
            if r.returncode == 0:
                return time.monotonic() - start
            last = r.stderr
        raise AssertionError(f"echoscu did not succeed within {seconds} s: {last}")


@contextmanager
def serving(tmp_path: Path, **edge: Any) -> Iterator[Edge]:
    settings: dict[str, Any] = {"acceptors": 1, "artim_timeout_s": 2.0, "max_unauthenticated": 16}
    settings.update(edge)
    data = edge_config(tmp_path, **settings)
    with piped_edge(tmp_path, data, Edge) as e:
        yield e


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _closed_by_edge(sock: socket.socket, timeout: float) -> bool:
    got = recv_pdu(sock, timeout)
    return got is None or got[0] == 0x07


def test_half_open_sockets_do_not_lock_registered_nodes_out(tmp_path: Path) -> None:
    """45 sockets send a PDU header claiming 1,000 bytes plus 4 bytes, then nothing."""
    with serving(tmp_path) as edge, ExitStack() as stack:
        socks = []
        for _ in range(45):
            s = stack.enter_context(_connect(edge.port))
            s.sendall(b"\x01\x00" + (1000).to_bytes(4, "big") + b"\x00\x01\x00\x00")
            socks.append(s)
        assert edge.echo_within(2.0) < 2.0  # during the attack
        assert edge.echo_within(2.0) < 2.0
        # every socket is closed by the edge: evicted at once, or at ARTIM (2 s here)
        assert all(_closed_by_edge(s, 10) for s in socks)
        # the edge's log is read from its pipe by a thread: the last lines may trail the closes
        wait_for(
            lambda: sum("connection refused peer=127.0.0.1" in ln for ln in edge.lines) >= 45,
            10,
            "a refusal line per socket",
        )
        assert "too many unauthenticated connections" in edge.text()
        assert "A-ASSOCIATE-RQ incomplete at edge.artim_timeout_s" in edge.text()
        assert edge.echo_within(2.0) < 2.0  # after
        assert edge.rss_mb() < RSS_LIMIT_MB


def test_idle_tcp_connections_do_not_refuse_registered_nodes(tmp_path: Path) -> None:
    """300 idle TCP connections: registered nodes still get in at once, each refusal logged."""
    with serving(tmp_path) as edge, ExitStack() as stack:
        socks = [stack.enter_context(_connect(edge.port)) for _ in range(300)]
        assert edge.echo_within(2.0) < 2.0
        wait_for(
            lambda: sum("connection refused peer=127.0.0.1" in ln for ln in edge.lines) >= 284,
            10,
            "a refusal line per evicted connection",
        )
        assert edge.echo_within(2.0) < 2.0
        assert all(_closed_by_edge(s, 10) for s in socks)  # the last 16 at ARTIM
        assert "no A-ASSOCIATE-RQ within edge.artim_timeout_s" in edge.text()
        assert edge.rss_mb() < RSS_LIMIT_MB


def test_stalled_registered_associations_are_aborted(tmp_path: Path) -> None:
    """32 registered associations stalled mid-P-DATA hold every slot only until the DIMSE
    deadline: each gets an A-ABORT, the slots come back, echoscu gets in."""
    with serving(tmp_path, max_associations=32, dimse_timeout_s=1.0) as edge, ExitStack() as stack:
        socks = []
        started = time.monotonic()
        command = cmd.store_rq(1, CT, "1.2.826.0.1.3680043.10.1255.1")
        for _ in range(32):
            s = stack.enter_context(
                associated(edge.port, calling="STORESCU", contexts=[(CT, EXPLICIT)])
            )
            s.sendall(p_data(1, 0x03, command) + p_data(1, 0x00, b"\x08\x00\x16\x00UI\x04\x00"))
            socks.append(s)
        assert edge.echo_within(2.0) + (time.monotonic() - started) < 4.0
        assert all(_closed_by_edge(s, 5) for s in socks)
        assert edge.echo_within(2.0) < 2.0
        assert edge.rss_mb() < RSS_LIMIT_MB


@pytest.mark.parametrize("parallel", [1, 3])
def test_huge_associate_rq_is_aborted_before_it_is_read(tmp_path: Path, parallel: int) -> None:
    """A-ASSOCIATE-RQs declaring 1 GiB and streaming junk: A-ABORT at once, memory flat."""
    with serving(tmp_path) as edge:
        before = edge.rss_mb()
        results: list[tuple[int, bytes] | None] = []

        def attack() -> None:
            with _connect(edge.port) as s:
                s.sendall(b"\x01\x00" + (1 << 30).to_bytes(4, "big"))
                got = recv_pdu(s, 5)
                results.append(got)
                try:
                    for _ in range(64):  # keep pushing; the edge has closed the connection
                        s.sendall(b"\0" * 65536)
                except OSError:
                    pass

        threads = [threading.Thread(target=attack) for _ in range(parallel)]
        for t in threads:
            t.start()
        assert edge.echo_within(2.0) < 2.0
        for t in threads:
            t.join(30)
        assert results == [ABORT_INVALID] * parallel
        assert edge.rss_mb() < min(RSS_LIMIT_MB, before + 50)
        assert edge.text().count("A-ASSOCIATE-RQ declares 1073741824 bytes") == parallel


def test_4gb_pdu_header_then_silence(tmp_path: Path) -> None:
    """Before and after association: a header declaring 4 GB is aborted and the socket closed."""
    with serving(tmp_path) as edge:
        with _connect(edge.port) as s:
            s.sendall(b"\x01\x00\xff\xff\xff\xf0")
            assert recv_pdu(s, 5) == ABORT_INVALID
            assert recv_pdu(s, 5) is None  # closed
        with associated(edge.port, calling="STORESCU", contexts=[(CT, EXPLICIT)]) as s:
            s.sendall(b"\x04\x00\xff\xff\xff\xf0")
            assert recv_pdu(s, 5) == ABORT_INVALID
            assert recv_pdu(s, 5) is None
        assert edge.echo_within(2.0) < 2.0
        assert edge.rss_mb() < RSS_LIMIT_MB


def test_c_store_with_empty_affected_sop_instance_uid_gets_a_response(tmp_path: Path) -> None:
    """The command names no instance: 0xA900 (the command does not match the dataset)."""
    ds = next(iter_study(StudySpec(instances_per_series=1)))
    with serving(tmp_path) as edge:
        with associated(edge.port, calling="STORESCU", contexts=[(CT, EXPLICIT)]) as s:
            command = cmd.store_rq(5, CT, "")
            s.sendall(p_data(1, 0x03, command) + p_data(1, 0x02, encoded_dataset(ds)))
            got = recv_pdu(s, 10)
            assert got is not None and got[0] == 0x04
            rsp = cmd.decode(got[1][6:])
            assert (rsp.field, rsp.responding_to, rsp.status) == (cmd.C_STORE_RSP, 5, 0xA900)
        assert edge.echo_within(2.0) < 2.0
        assert port_open(edge.port)


def test_garbage_instead_of_an_associate_rq_is_aborted_and_logged(tmp_path: Path) -> None:
    with serving(tmp_path) as edge:
        with _connect(edge.port) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            got = recv_pdu(s, 5)
            assert got is not None and got[0] == 0x07
        with _connect(edge.port) as s:  # a well-framed RQ whose items are garbage
            body = b"\x00\x01\x00\x00" + b"HPACS".ljust(16) + b"ECHOSCU".ljust(16) + b"\0" * 32
            s.sendall(b"\x01\x00" + len(body + b"\x99\x00\x00\x05junk!").to_bytes(4, "big"))
            s.sendall(body + b"\x99\x00\x00\x05junk!")
            got = recv_pdu(s, 5)
            assert got is not None and got[0] == 0x07
        text = edge.text()
        assert "protocol mismatch: PDU type 0x47 instead of A-ASSOCIATE-RQ" in text
        assert "Traceback" not in text
        assert associate_rq()  # the helper itself builds a valid request (used above)
        assert edge.echo_within(2.0) < 2.0


def test_serve_stops_within_2_seconds_when_idle(tmp_path: Path) -> None:
    """SIGTERM to an idle `hpacs-edge serve` (default acceptors, HTTP on): gone in under 2 s,
    before a service manager's SIGKILL (issue 12, defect 10)."""
    from tests.support.net import free_port

    with serving(tmp_path, acceptors="auto", http_port=free_port()) as edge:
        assert edge.echo_within(2.0) < 2.0
        started = time.monotonic()
        edge.proc.send_signal(signal.SIGTERM)
        assert edge.proc.wait(10) == 0
        took = time.monotonic() - started
    assert took < 2.0, f"stopped in {took:.2f} s"
    assert "edge node stopped" in edge.text()
