"""Who may call what on the edge's HTTP API: the route table walked route by route, sessions
(cookie flags, CSRF, expiry by password change and removal), and failed sign-ins.

Real HTTP against the edge's aiohttp side on a free port; users are real rows with argon2 hashes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from aiohttp import web

from edge.http import EdgeHttp
from edge.server import EdgeServer
from edge.users import add_user
from edge.webauth import ALLOWED, Need
from tests.support.console import TOKEN, running_http, signed_in
from tests.support.edge import edge_config, running_edge
from tests.support.net import free_port

PASSWORD = "correct horse battery"
ROLES = ("admin", "technician", "viewer")
SAMPLE = {
    "{ae}": "NOSUCH",
    "{uid}": "1.2.3.4",
    "{name}": "nosuch",
    "{study}": "1.2.3.4",
    "{series}": "1.2.3.5",
    "{instance}": "1.2.3.6",
    "{frames}": "1",
    "{tag}": "7FE00010",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeServer, EdgeHttp]]:
    tmp = tmp_path_factory.mktemp("roles")
    data = edge_config(tmp, http_port=free_port(), login_max_failures_per_user=3)
    with running_edge(data) as edge:
        with edge.db.write() as conn:
            for role in ROLES:
                add_user(conn, role, role, PASSWORD)
        with running_http(edge) as http:
            yield edge, http


def base(http: EdgeHttp) -> str:
    return f"http://127.0.0.1:{http.port}"


def concrete(path: str) -> str:
    for k, v in SAMPLE.items():
        path = path.replace(k, v)
    return path


def test_every_api_route_declares_a_need(site: tuple[EdgeServer, EdgeHttp]) -> None:
    _, http = site
    app = http.app()
    declared = {(m, p) for m, p, _, _ in http.routes()}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter", "")
        if path.startswith(("/api/", "/dicomweb")) and route.method != "HEAD":
            assert (route.method, path) in declared, f"{route.method} {path} has no need"


def test_each_role_reaches_exactly_its_routes(site: tuple[EdgeServer, EdgeHttp]) -> None:
    """For every route in the table and every role: 403 when the role lacks the need, never
    401/403 when it has it (the handler may still say 400/404 for the sample values)."""
    _, http = site
    sessions = {role: signed_in(http, role, PASSWORD) for role in ROLES}
    for method, path, _, need in http.routes():
        url = base(http) + concrete(path)
        for role, s in sessions.items():
            r = s.request(method, url, json={} if method in ("POST", "PUT") else None, timeout=30)
            allowed = need in ALLOWED[role]
            if allowed:
                assert r.status_code not in (401, 403), (role, method, path, r.text)
            else:
                assert r.status_code == 403, (role, method, path, r.status_code)
                assert r.headers["Content-Type"].startswith("application/problem+json")
        anonymous = requests.request(method, url, timeout=30)
        assert anonymous.status_code == 401, (method, path)


def test_viewer_sees_only_the_browser(site: tuple[EdgeServer, EdgeHttp]) -> None:
    _, http = site
    s = signed_in(http, "viewer", PASSWORD)
    me = s.get(base(http) + "/api/session", timeout=30).json()
    assert me == {"name": "viewer", "role": "viewer", "kind": "user", "needs": ["view"]}
    assert s.get(base(http) + "/api/studies", timeout=30).status_code == 200
    assert s.get(base(http) + "/api/status", timeout=30).status_code == 403
    tech = signed_in(http, "technician", PASSWORD).get(base(http) + "/api/session", timeout=30)
    assert tech.json()["needs"] == ["operate", "view"]
    assert set(ALLOWED["admin"]) == set(Need)


class Leaky(EdgeHttp):
    """An app with one /api route added outside the table: it must be refused."""

    def app(self) -> web.Application:
        app = super().app()

        async def leak(request: web.Request) -> web.Response:
            return web.json_response({"leaked": True})

        app.router.add_get("/api/leak", leak)
        return app


def test_a_route_outside_the_table_is_refused_even_to_the_token(tmp_path: Path) -> None:
    data = edge_config(tmp_path, http_port=free_port())
    with running_edge(data) as edge:
        http = Leaky(
            edge.cfg, edge.db, edge.active_associations, ingestor=edge.ingestor, token=TOKEN
        )
        http.start()
        try:
            r = requests.get(
                base(http) + "/api/leak", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
            )
            assert r.status_code == 403
            assert "declares no access rule" in r.json()["detail"]
        finally:
            http.stop()


def test_session_cookie_flags_and_csrf(site: tuple[EdgeServer, EdgeHttp]) -> None:
    _, http = site
    r = requests.post(
        base(http) + "/login",
        json={"user": "admin", "password": PASSWORD},
        headers={"Origin": base(http)},
        timeout=30,
    )
    assert r.status_code == 200
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback, not forced
    assert re.search(r"Max-Age=28800", cookie)
    jar = r.cookies
    # a state-changing request with the cookie but from another site is refused
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {}):
        bad = requests.post(
            base(http) + "/api/routes/retry", cookies=jar, headers=headers, timeout=30
        )
        assert bad.status_code == 401, headers
    ok = requests.post(
        base(http) + "/api/routes/retry", cookies=jar, headers={"Origin": base(http)}, timeout=30
    )
    assert ok.status_code == 200
    # reads need no Origin (SameSite=Strict keeps the cookie off cross-site requests)
    assert requests.get(base(http) + "/api/session", cookies=jar, timeout=30).status_code == 200
    # login itself is same-origin only (no login CSRF)
    foreign = requests.post(
        base(http) + "/login",
        json={"user": "admin", "password": PASSWORD},
        headers={"Origin": "http://evil.example"},
        timeout=30,
    )
    assert foreign.status_code == 401


def test_secure_cookie_when_forced(tmp_path: Path) -> None:
    data = edge_config(tmp_path, http_port=free_port(), session_cookie_secure=True)
    with running_edge(data) as edge, running_http(edge) as http:
        r = requests.post(
            base(http) + "/login", json={"token": TOKEN}, headers={"Origin": base(http)}, timeout=30
        )
        assert r.status_code == 200 and "Secure" in r.headers["Set-Cookie"]
        assert r.json()["role"] == "admin"


def test_password_change_and_removal_end_sessions(site: tuple[EdgeServer, EdgeHttp]) -> None:
    _, http = site
    admin = signed_in(http, "admin", PASSWORD)
    created = admin.post(
        base(http) + "/api/users",
        json={"name": "temp", "role": "technician", "password": PASSWORD},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    temp = signed_in(http, "temp", PASSWORD)
    assert temp.get(base(http) + "/api/status", timeout=30).status_code == 200
    r = admin.put(base(http) + "/api/users/temp", json={"password": "another long one"}, timeout=30)
    assert r.status_code == 200
    assert temp.get(base(http) + "/api/status", timeout=30).status_code == 401
    temp = signed_in(http, "temp", "another long one")
    assert admin.delete(base(http) + "/api/users/temp", timeout=30).status_code == 200
    assert temp.get(base(http) + "/api/status", timeout=30).status_code == 401
    actions = [
        e["action"] for e in admin.get(base(http) + "/api/audit", timeout=30).json()["events"]
    ]
    assert {"user-add", "user-passwd", "user-remove", "login"} <= set(actions)


def test_failed_logins_are_rate_limited_and_logged_without_the_password(
    site: tuple[EdgeServer, EdgeHttp], caplog: pytest.LogCaptureFixture
) -> None:
    edge, http = site
    with edge.db.write() as conn:
        add_user(conn, "target", "viewer", PASSWORD)
    caplog.set_level(logging.WARNING, logger="hpacs.edge.auth")
    attempt = lambda pw: requests.post(  # noqa: E731
        base(http) + "/login",
        json={"user": "target", "password": pw},
        headers={"Origin": base(http)},
        timeout=30,
    )
    codes = [attempt(f"wrong-guess-{i}").status_code for i in range(3)]
    assert codes == [401, 401, 401]
    limited = attempt(PASSWORD)  # even the right password waits now
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    text = caplog.text
    assert "login failed user=target client=127.0.0.1" in text
    assert "rate-limited" in text
    assert "wrong-guess" not in text and PASSWORD not in text
    audit = requests.get(
        base(http) + "/api/audit", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ).json()["events"]
    denied = [e for e in audit if e["action"] == "login" and e["outcome"] == "denied"]
    assert len([e for e in denied if e["actor"] == "target"]) == 4
    assert all("wrong-guess" not in json.dumps(e) for e in audit)
