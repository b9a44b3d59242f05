"""Absolute URLs in DICOMweb responses: configured base, trusted proxies' headers, the request.

The rules are a pure function (table below); the live tests check that the cloud API's
RetrieveURL (STOW) and BulkDataURI (metadata) follow them for each configuration key.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shared.config import ConfigError, parse_config
from shared.dicomweb.urls import RequestOrigin, parse_networks, public_base
from shared.errors import BadRequest
from shared.store.base import open_store
from tests.support.cloud import (
    CloudServer,
    cloud_config,
    dataset_bytes,
    make_token,
    running_cloud,
)
from tests.support.dicomweb import seed_objects, study

PROXY = "10.0.0.7"
CLIENT = "203.0.113.9"
TRUSTED = parse_networks(["10.0.0.0/8", "fd00::/8"])


def origin(
    headers: dict[str, str] | None = None,
    peer: str = PROXY,
    host: str | None = "pacs.internal:8081",
    scheme: str = "http",
    port: int = 8081,
) -> RequestOrigin:
    return RequestOrigin(scheme, host, port, "10.0.0.2", peer, headers or {})


CASES = [
    # what the request says, trusted networks, configured base -> expected base
    ("direct, Host with port", origin(), (), "", "http://pacs.internal:8081"),
    (
        "direct, Host without port",
        origin(host="pacs.internal"),
        (),
        "",
        "http://pacs.internal:8081",
    ),
    ("direct on the default port", origin(host="pacs", port=80), (), "", "http://pacs"),
    ("no Host header (HTTP/1.0)", origin(host=None), (), "", "http://10.0.0.2:8081"),
    (
        "X-Forwarded-* from an untrusted peer are ignored",
        origin({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}, peer=CLIENT),
        TRUSTED,
        "",
        "http://pacs.internal:8081",
    ),
    (
        "X-Forwarded-* without trusted_proxies are ignored",
        origin({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}),
        (),
        "",
        "http://pacs.internal:8081",
    ),
    (
        "X-Forwarded-Proto/Host from a trusted proxy",
        origin({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example.org"}),
        TRUSTED,
        "",
        "https://pacs.example.org",
    ),
    (
        "X-Forwarded-Proto alone keeps the Host, adds no port of ours",
        origin({"X-Forwarded-Proto": "https"}, host="pacs.example.org"),
        TRUSTED,
        "",
        "https://pacs.example.org",
    ),
    (
        "X-Forwarded-Port is added when not the scheme's default",
        origin(
            {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "p.org", "X-Forwarded-Port": "8443"}
        ),
        TRUSTED,
        "",
        "https://p.org:8443",
    ),
    (
        "a chain: the first trusted proxy's values",
        origin(
            {
                "X-Forwarded-For": f"{CLIENT}, 10.1.1.1",
                "X-Forwarded-Proto": "https, http",
                "X-Forwarded-Host": "pacs.example.org, lb.internal",
            }
        ),
        TRUSTED,
        "",
        "https://pacs.example.org",
    ),
    (
        "a chain through an untrusted hop: only what our proxy saw",
        origin(
            {
                "X-Forwarded-For": f"{CLIENT}, 198.51.100.1",
                "X-Forwarded-Proto": "https, http",
                "X-Forwarded-Host": "evil.example, lb.internal",
            }
        ),
        TRUSTED,
        "",
        "http://lb.internal",
    ),
    (
        "Forwarded (RFC 7239)",
        origin({"Forwarded": f'for={CLIENT};proto=https;host="pacs.example.org"'}),
        TRUSTED,
        "",
        "https://pacs.example.org",
    ),
    (
        "Forwarded chain, IPv6 proxy trusted",
        origin(
            {
                "Forwarded": f"for={CLIENT};proto=https;host=pacs.example.org, "
                'for="[fd00::5]:4711";proto=http;host=lb.internal'
            }
        ),
        TRUSTED,
        "",
        "https://pacs.example.org",
    ),
    (
        "Forwarded wins over X-Forwarded-*",
        origin({"Forwarded": "proto=https;host=a.org", "X-Forwarded-Host": "b.org"}),
        TRUSTED,
        "",
        "https://a.org",
    ),
    (
        "a proto that is not http(s) is ignored",
        origin({"X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "a.org"}),
        TRUSTED,
        "",
        "http://a.org",
    ),
    (
        "the configured base wins over everything",
        origin({"X-Forwarded-Proto": "http", "X-Forwarded-Host": "lb.internal"}),
        TRUSTED,
        "https://pacs.example.org/imaging/",
        "https://pacs.example.org/imaging",
    ),
]


@pytest.mark.parametrize(("what", "req", "trusted", "configured", "expected"), CASES)
def test_public_base(
    what: str, req: RequestOrigin, trusted: tuple, configured: str, expected: str
) -> None:
    assert public_base(req, trusted, configured) == expected, what


@pytest.mark.parametrize("host", ["a b", "x.org/evil", "x.org:99999999", "<script>"])
def test_a_host_header_that_is_no_host_is_400(host: str) -> None:
    with pytest.raises(BadRequest):
        public_base(origin(host=host), (), "")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("trusted_proxies", ["10.0.0.0/33"]),
        ("trusted_proxies", ["not-an-ip"]),
        ("public_base_url", "pacs.example.org"),
        ("public_base_url", "ftp://pacs.example.org"),
        ("public_base_url", "https://pacs.example.org/x?y=1"),
    ],
)
def test_bad_config_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"cloud.{key}"):
        parse_config({"cloud": {key: value}})


# ---- live: the cloud API's URLs follow the configuration -----------------------------------------


def _serve(tmp: Path, **cfg: object) -> Iterator[tuple[CloudServer, str, str]]:
    c = cloud_config(tmp, **cfg)
    store = open_store(c.store_url)
    (ds,) = study(1)
    seed_objects(store, "a", [dataset_bytes(ds)])
    token = make_token(c, "root", "admin", [])
    with running_cloud(c, store) as server:
        path = f"/dicomweb/studies/{ds.StudyInstanceUID}/metadata"
        yield server, token, path


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[tuple[CloudServer, str, str]]:
    yield from _serve(tmp_path)


@pytest.fixture
def behind_proxy(tmp_path: Path) -> Iterator[tuple[CloudServer, str, str]]:
    yield from _serve(tmp_path, trusted_proxies=["127.0.0.1/32"])


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[tuple[CloudServer, str, str]]:
    yield from _serve(
        tmp_path, trusted_proxies=["127.0.0.1"], public_base_url="https://pacs.example.org"
    )


def _bulk_uri(server: CloudServer, token: str, path: str, headers: dict[str, str]) -> str:
    r = requests.get(
        server.url + path, headers={"Authorization": f"Bearer {token}", **headers}, timeout=30
    )
    assert r.status_code == 200, r.text
    return str(r.json()[0]["7FE00010"]["BulkDataURI"])


PROXIED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example.org"}


def test_proxy_headers_are_ignored_unless_the_peer_is_trusted(plain) -> None:  # type: ignore[no-untyped-def]
    server, token, path = plain
    uri = _bulk_uri(server, token, path, PROXIED)
    assert uri.startswith(f"http://127.0.0.1:{server.cfg.port}/dicomweb/studies/")


def test_proxy_headers_from_a_trusted_proxy_make_https_urls(behind_proxy) -> None:  # type: ignore[no-untyped-def]
    server, token, path = behind_proxy
    assert _bulk_uri(server, token, path, PROXIED).startswith("https://pacs.example.org/dicomweb/")
    fwd = {"Forwarded": "for=198.51.100.2;proto=https;host=viewer.example.org"}
    assert _bulk_uri(server, token, path, fwd).startswith("https://viewer.example.org/dicomweb/")


def test_configured_public_base_url_wins(configured) -> None:  # type: ignore[no-untyped-def]
    server, token, path = configured
    other = {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "lb.internal"}
    assert _bulk_uri(server, token, path, other).startswith("https://pacs.example.org/dicomweb/")
    (ds,) = study(1)
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + dataset_bytes(ds) + b"\r\n--b--\r\n"
    agent = make_token(server.cfg, "up", "agent", ["cloud"])
    r = requests.post(
        server.dicomweb + "/studies",
        data=body,
        headers={
            "Authorization": f"Bearer {agent}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    url = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert url.startswith(f"https://pacs.example.org/dicomweb/studies/{ds.StudyInstanceUID}/")


def test_a_client_that_omits_the_port_gets_ours(plain) -> None:  # type: ignore[no-untyped-def]
    """A Host header without a port used to make every URL point at port 80."""
    server, token, path = plain
    conn = http.client.HTTPConnection("127.0.0.1", server.cfg.port, timeout=30)
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", "127.0.0.1")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.endheaders()
    resp = conn.getresponse()
    doc = json.loads(resp.read())
    conn.close()
    assert doc[0]["7FE00010"]["BulkDataURI"].startswith(f"http://127.0.0.1:{server.cfg.port}/")
