"""Requests refused before a route cannot grow the audit log: counted per client address and
window, rate-limited per address (429 + Retry-After), malformed request lines answered by
aiohttp without a traceback in our log; a valid token keeps working meanwhile. Also: the bearer
scheme is case-insensitive (RFC 9110)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cloud_api.denials import OVERFLOW, DenialGate
from shared.store.base import open_store
from tests.support.cloud import CloudServer, cloud_config, make_token, running_cloud
from tests.support.net import wait_for

FLOOD = 3000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _gate(clock: Clock, **kw: float) -> DenialGate:
    args: dict = {"window_s": 60.0, "rate_per_s": 2.0, "burst": 5, "max_clients": 3, **kw}
    return DenialGate(clock=clock, wall=lambda: 1.7e9, **args)


def test_token_bucket_per_address() -> None:
    clock = Clock()
    gate = _gate(clock)
    assert [gate.deny("10.0.0.1", "GET /") for _ in range(5)] == [0.0] * 5  # the burst
    assert gate.deny("10.0.0.1", "GET /") == pytest.approx(0.5)  # empty: 1 token at 2/s
    assert gate.deny("10.0.0.2", "GET /") == 0.0  # another address has its own bucket
    clock.now += 1.0
    assert [gate.deny("10.0.0.1", "GET /") > 0 for _ in range(3)] == [False, False, True]


def test_one_tally_per_address_and_window() -> None:
    clock = Clock()
    gate = _gate(clock)
    for i in range(50):
        gate.deny("10.0.0.1", f"GET /p{i % 5}")
    gate.deny("10.0.0.2", "POST /x")
    assert gate.due() == []  # the window is still open
    clock.now += 60.0
    a, b = gate.due()
    assert (a.client, a.count, a.statuses[401], a.statuses[429]) == ("10.0.0.1", 50, 5, 45)
    assert a.status == 429 and a.paths == ["GET /p0", "GET /p1", "GET /p2"] and a.other_paths == 20
    assert "401x5 429x45 in 60s from 2023-11-14T22:13:20Z" in a.detail(60.0)
    assert (b.client, b.count, b.status) == ("10.0.0.2", 1, 401)
    assert gate.due() == []  # recorded once


def test_addresses_beyond_the_limit_share_one_bucket() -> None:
    clock = Clock()
    gate = _gate(clock, max_clients=2)
    for i in range(20):  # rotating source addresses
        gate.deny(f"2001:db8::{i}", "GET /")
    tallies = {t.client: t.count for t in gate.drain()}
    assert tallies == {"2001:db8::0": 1, "2001:db8::1": 1, OVERFLOW: 18}
    clock.now += 60.0
    gate.drain()
    assert gate.deny("2001:db8::99", "GET /") == 0.0  # refilled buckets were forgotten


@pytest.fixture
def server(tmp_path: Path, catalog_url: str) -> Iterator[CloudServer]:
    cfg = cloud_config(tmp_path, catalog=catalog_url)
    with running_cloud(cfg, open_store(cfg.store_url)) as s:
        s.tokens["admin"] = make_token(cfg, "root", "admin", [])
        yield s


def _records(server: CloudServer) -> list[dict]:
    return [json.loads(line) for line in server.services.audit.path.read_text().splitlines()]


def test_a_flood_of_refused_requests_adds_a_bounded_audit_trail(server: CloudServer) -> None:
    path = server.services.audit.path
    before_records, before_bytes = len(_records(server)), path.stat().st_size
    statuses: dict[int, int] = {}
    retry_after: set[str] = set()
    lock = threading.Lock()

    def flood(n: int) -> None:
        with requests.Session() as s:
            for i in range(n):
                r = s.get(f"{server.url}/dicomweb/studies?i={i}", timeout=30)
                with lock:
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 429:
                        retry_after.add(r.headers["Retry-After"])

    threads = [threading.Thread(target=flood, args=(FLOOD // 4,)) for _ in range(4)]
    for t in threads:
        t.start()
    admin = {"Authorization": f"Bearer {server.tokens['admin']}"}
    legit = [requests.get(server.url + "/dicomweb/studies", headers=admin, timeout=30)]
    for t in threads:
        t.join()
    assert legit[0].status_code in (200, 204)  # a valid token is never limited
    assert sum(statuses.values()) == FLOOD and set(statuses) == {401, 429}
    assert statuses[401] <= server.cfg.denied_burst + 60 and retry_after <= {"1"}
    r = requests.get(server.url + "/api/audit?limit=10", headers=admin, timeout=30)
    denied = [e for e in r.json()["events"] if e["action"] == "denied"]
    assert len(denied) == 1 and denied[0]["count"] == FLOOD and denied[0]["client"] == "127.0.0.1"
    added = _records(server)[before_records:]
    assert len(added) <= 3, [a["action"] for a in added]  # the legit request, the tally, this read
    assert path.stat().st_size - before_bytes < 3000


def test_windows_are_recorded_when_they_end(tmp_path: Path) -> None:
    cfg = cloud_config(tmp_path, denied_window_s=0.5)
    with running_cloud(cfg, open_store(cfg.store_url)) as server:
        for _ in range(3):
            assert requests.get(server.url + "/api/sites", timeout=30).status_code == 401
        wait_for(lambda: any(r["action"] == "denied" for r in _records(server)), 10, "tally")
        (rec,) = [r for r in _records(server) if r["action"] == "denied"]
        assert (rec["count"], rec["status"], rec["outcome"]) == (3, 401, "denied")
        assert "GET /api/sites" in rec["detail"]
        requests.get(server.url + "/nowhere", timeout=30)
    # at shutdown the open window is recorded too
    recs = [
        json.loads(line)
        for line in (tmp_path / "cloud" / "audit.jsonl").read_text().split("\n")
        if line
    ]
    assert recs[-1]["action"] == "denied" and "GET /nowhere" in recs[-1]["detail"]


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        return s.recv(200)


def test_oversized_request_line_and_header_log_no_traceback(
    server: CloudServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    line = b"GET /dicomweb/studies?PatientName=DOE" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"
    for request in (line, header):
        status = int(_raw(server.cfg.port, request).split(b" ", 2)[1])
        assert status in (400, 414, 431)
    wait_for(lambda: len([r for r in caplog.records if "malformed" in r.getMessage()]) == 2, 10)
    assert "Traceback" not in caplog.text and "DOE" not in caplog.text
    assert all(r.exc_info is None for r in caplog.records)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(server: CloudServer, scheme: str) -> None:
    auth = {"Authorization": f"{scheme} {server.tokens['admin']}"}
    assert requests.get(server.url + "/api/sites", headers=auth, timeout=30).status_code == 200


@pytest.mark.parametrize("header", ["Bearer", "Bearer  ", "Basic abc", "Bearerx abc"])
def test_other_schemes_and_empty_tokens_stay_refused(server: CloudServer, header: str) -> None:
    r = requests.get(server.url + "/api/sites", headers={"Authorization": header}, timeout=30)
    assert r.status_code == 401
