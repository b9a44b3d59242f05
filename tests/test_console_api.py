"""The console's JSON API without a browser: errors as problem+json, C-ECHO over DICOM TLS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.console import call, call_json, running_http
from tests.support.edge import edge_config, running_edge
from tests.support.net import free_port
from tests.support.tls import server_cert_files


def test_api_errors_are_problem_json(tmp_path: Path) -> None:
    data = edge_config(tmp_path, http_port=free_port())
    with running_edge(data) as edge, running_http(edge) as http:
        cases = [
            ("/api/nodes/NOSUCH/echo", "POST", 404, "NotFound"),
            ("/api/studies/1.2.3.4/pin", "POST", 404, "NotFound"),
            ("/api/studies/not..a..uid/pin", "POST", 400, "BadRequest"),
            ("/api/studies?limit=abc", "GET", 400, "BadRequest"),
            ("/api/routes/retry?id=x", "POST", 400, "BadRequest"),
        ]
        for path, method, status, title in cases:
            got, headers, body = call(http, path, method=method)
            assert got == status, (path, body)
            assert headers["Content-Type"].startswith("application/problem+json")
            assert json.loads(body)["title"] == title
        status, body = call_json(http, "/api/routes/retry", method="POST")
        assert (status, body) == (200, {"requeued": 0})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    key, cert, ca_file = server_cert_files(tmp_path_factory.mktemp("pki"), "127.0.0.1", "localhost")
    return {"ca_file": str(ca_file), "cert_file": str(cert), "key": str(key)}


def test_echo_reaches_a_tls_node_with_the_edge_certificate(
    tmp_path: Path, pki: dict[str, str]
) -> None:
    """The node is the edge's own mutual-TLS listener: the echo must present our certificate."""
    tls_port = free_port()
    tls = {
        "port": tls_port,
        "cert_file": pki["cert_file"],
        "key_file": pki["key"],
        "ca_file": pki["ca_file"],
        "require_client_cert": True,
    }
    node = {"ae_title": "HPACS", "host": "127.0.0.1", "port": tls_port, "tls": True,
            "permissions": ["echo"]}  # fmt: skip
    data = edge_config(tmp_path, http_port=free_port(), tls=tls, nodes=[node])
    with running_edge(data) as edge, running_http(edge) as http:
        status, body = call_json(http, "/api/nodes/HPACS/echo", method="POST")
    assert status == 200
    assert body["ok"] is True, body
    assert body["status"] == "0x0000"
    assert body["rtt_ms"] > 0
