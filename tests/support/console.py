"""The edge's HTTP side on a free port, plain HTTP calls, and a headless system Chromium."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from edge.http import EdgeHttp
from edge.server import EdgeServer

TOKEN = "test-console-token"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def running_http(server: EdgeServer, token: str = TOKEN) -> Iterator[EdgeHttp]:
    """The edge's HTTP side for a running test edge (its config must set http_port)."""
    http = EdgeHttp(
        server.cfg,
        server.db,
        server.active_associations,
        ingestor=server.ingestor,
        recaller=server.recaller,
        token=token,
    )
    http.start()
    try:
        yield http
    finally:
        http.stop()


def call(
    http: EdgeHttp,
    path: str,
    *,
    method: str = "GET",
    token: str | None = TOKEN,
    body: Any = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request, errors included (no exception on 4xx/5xx);
    `body` is sent as JSON."""
    req = urllib.request.Request(f"http://127.0.0.1:{http.port}{path}", method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    data = b"" if method in ("POST", "PUT") else None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, data=data, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def call_json(http: EdgeHttp, path: str, **kw: Any) -> tuple[int, Any]:
    status, _, body = call(http, path, **kw)
    return status, json.loads(body)


def signed_in(http: EdgeHttp, user: str, password: str) -> requests.Session:
    """A browser-like client signed in as a user: the session cookie, and the Origin header a
    browser sends with state-changing requests."""
    base = f"http://127.0.0.1:{http.port}"
    s = requests.Session()
    s.headers["Origin"] = base
    r = s.post(base + "/login", json={"user": user, "password": password}, timeout=30)
    assert r.status_code == 200, r.text
    return s


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium driven by Playwright; no browser download."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `make deps` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def new_page(
    browser: Any, *, height: int = 800, timeout_ms: int = 15_000, **context: Any
) -> Iterator[Any]:
    """A page 1280 wide in a fresh browser context (no cookies carried from another test),
    closed after; `context` goes to Playwright's new_context (accept_downloads, ...)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": height}, **context)
    pg = ctx.new_page()
    pg.set_default_timeout(timeout_ms)
    try:
        yield pg
    finally:
        ctx.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
