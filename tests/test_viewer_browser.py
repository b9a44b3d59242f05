"""The built-in OHIF viewer in headless Chromium against a real cloud API and a real edge (one
of each per module: the same shared DICOMweb and viewer code behind both).

Studies are stored through STOW-RS (the cloud's admin token, the edge's console token), then a
reader signs in on the login page (the cloud: a reader token; the edge: a user of role viewer)
and opens `/viewer/viewer?StudyInstanceUIDs=<uid>`. Each case reads the viewport's canvas back
and compares it with the instance decoded by pydicom under the same window
(tests/support/viewer): a blank or wrongly decoded canvas fails. No request may fail or answer
>= 400 meanwhile.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from shared.synthetic import uid
from tests.support import viewer as v
from tests.support.cloud import cloud_config, make_token, running_cloud
from tests.support.console import chromium, screenshot
from tests.support.edgeweb import PASSWORD, edge_web_config, running_edge_web

RENDER_TIMEOUT_S = 40.0


@dataclass
class World:
    side: str  # "cloud" or "edge"
    url: str  # the server's origin
    browser: Any
    fill_login: Callable[[Any], None]  # fills the login form as the test's reader
    tokens: dict[str, str]
    server: Any = None  # the CloudServer (cloud-only tests)
    studies: dict[str, list[Dataset]] = field(default_factory=dict)


def _studies() -> dict[str, list[Dataset]]:
    return {
        "ct": v.ct_series(uid()),
        "j2k": [v.j2k_instance(uid())],
        "us": [v.us_colour_instance(uid())],
        "jpegll": v.jpeg_lossless_series(uid()),
    }


def _cloud(stack: ExitStack, tmp: Any) -> tuple[str, Callable[[Any], None], dict[str, str], Any]:
    from shared.store.base import open_store

    cfg = cloud_config(tmp)
    store = open_store(cfg.store_url)
    tokens = {
        "admin": make_token(cfg, "root", "admin", []),
        "reader": make_token(cfg, "rad", "reader", ["cloud"]),
    }
    server = stack.enter_context(running_cloud(cfg, store))

    def fill(page: Any) -> None:
        page.fill("#token", tokens["reader"])

    return server.url, fill, {"writer": tokens["admin"], **tokens}, server


def _edge(stack: ExitStack, tmp: Any) -> tuple[str, Callable[[Any], None], dict[str, str], Any]:
    web = stack.enter_context(running_edge_web(edge_web_config(tmp)))

    def fill(page: Any) -> None:  # an edge user of role viewer, not the token
        page.fill("#user", "viewer")
        page.fill("#password", PASSWORD)

    return web.url, fill, {"writer": web.http.token}, web


@pytest.fixture(scope="module", params=["cloud", "edge"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp(f"viewer-{request.param}")
    studies = _studies()
    with ExitStack() as stack:
        start = _cloud if request.param == "cloud" else _edge
        url, fill, tokens, server = start(stack, tmp)
        stow = DICOMwebClient(url + "/dicomweb", headers=bearer(tokens["writer"]))
        for datasets in studies.values():
            stow.store_instances(datasets)
        with chromium() as browser:
            yield World(request.param, url, browser, fill, tokens, server, studies)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Watch:
    """Every failed request and every response >= 400 of a page."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        page.on("requestfailed", lambda r: self.problems.append(f"failed {r.url} {r.failure}"))
        page.on(
            "response",
            lambda r: self.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )


def sign_in(page: Any, url: str, fill: Callable[[Any], None]) -> None:
    """Open `url`; the viewer sends a browser without a session to the login page first."""
    page.goto(url)
    page.wait_for_url(re.compile(r"/login\?next="))
    fill(page)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(url)


def wait_rendered(page: Any, expected: list[Any], name: str) -> v.Match:
    """Poll the canvas until it shows one of the expected images (any slice of the series)."""
    deadline = time.monotonic() + RENDER_TIMEOUT_S
    best = v.Match(False, 255.0, 255.0, None, "no canvas yet")
    while time.monotonic() < deadline:
        shown = v.canvas_pixels(page)
        if shown is not None:
            for exp in expected:
                m = v.compare(shown, exp)
                if m.ok:
                    return m
                best = min(best, m, key=lambda x: x.mean_abs)
        page.wait_for_timeout(500)
    screenshot(page, f"viewer-{name}")
    pytest.fail(f"{name}: the viewport never showed the image: {best}")


def open_case(w: World, name: str) -> tuple[v.Match, list[str]]:
    datasets = w.studies[name]
    study = datasets[0].StudyInstanceUID
    ctx = w.browser.new_context(viewport={"width": 1100, "height": 800})
    try:
        page = ctx.new_page()
        watch = Watch(page)
        url = f"{w.url}/viewer/viewer?StudyInstanceUIDs={study}"
        sign_in(page, url, w.fill_login)
        assert page.evaluate("crossOriginIsolated") is True  # COOP/COEP: SharedArrayBuffer
        match = wait_rendered(page, [v.expected_display(ds) for ds in datasets], name)
        screenshot(page, f"viewer-{w.side}-{name}")
        return match, watch.problems
    finally:
        ctx.close()


def test_ct_renders_the_stored_pixels(world: World) -> None:
    match, problems = open_case(world, "ct")
    assert match.ok and match.mean_abs < 6, match
    assert problems == []
    # the check can fail: the same canvas is not the image turned upside down
    assert not v.compare(match.shown, np.flipud(v.expected_display(world.studies["ct"][0]))).ok


def test_jpeg2000_renders(world: World) -> None:
    match, problems = open_case(world, "j2k")
    assert match.ok, match
    assert problems == []


def test_colour_ultrasound_jpeg_baseline_renders(world: World) -> None:
    match, problems = open_case(world, "us")
    assert match.ok, match
    assert problems == []


def test_jpeg_lossless_renders(world: World) -> None:
    match, problems = open_case(world, "jpegll")
    assert match.ok, match
    assert problems == []


@pytest.mark.parametrize("world", ["cloud"], indirect=True)
def test_session_cookie_is_httponly_strict_and_not_readable(world: World) -> None:
    ctx = world.browser.new_context()
    try:
        page = ctx.new_page()
        sign_in(page, world.url + "/viewer/", world.fill_login)
        (cookie,) = [c for c in ctx.cookies() if c["name"] == "hpacs_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
        assert "hpacs_session" not in page.evaluate("document.cookie")
        who = page.evaluate("fetch('/api/session').then(r => r.json())")
        assert (who["name"], who["role"], who["authenticated_by"]) == ("rad", "reader", "session")
    finally:
        ctx.close()


@pytest.mark.parametrize("world", ["cloud"], indirect=True)
def test_share_link_opens_the_study_without_an_account(world: World) -> None:
    study = world.studies["ct"][0].StudyInstanceUID
    r = requests.post(
        world.server.url + "/api/shares",
        json={"study_uid": study, "hours": 1},
        headers=bearer(world.tokens["reader"]),
        timeout=30,
    )
    assert r.status_code == 201, r.text
    link = r.json()
    ctx = world.browser.new_context(viewport={"width": 1100, "height": 800})
    try:
        page = ctx.new_page()
        watch = Watch(page)
        page.goto(link["url"])
        page.wait_for_url(f"{world.server.url}/viewer/viewer?StudyInstanceUIDs={study}")
        expected = [v.expected_display(ds) for ds in world.studies["ct"]]
        assert wait_rendered(page, expected, "share").ok
        assert watch.problems == []
        # the session reads this study only
        other = world.studies["us"][0].StudyInstanceUID
        status = page.evaluate(f"fetch('/dicomweb/studies/{other}/metadata').then(r => r.status)")
        assert status == 404
    finally:
        ctx.close()
    audit = world.server.services.audit.path.read_text().splitlines()
    opened = [json.loads(x) for x in audit if f"share:{link['id']}" in x]
    assert opened[0]["action"] == "share-open" and opened[0]["status"] == 200
    assert {r["study_uid"] for r in opened if r["outcome"] == "ok"} <= {study, ""}  # "": QIDO
    assert any(r["action"] == "wado-frames" and r["outcome"] == "ok" for r in opened)
    assert [r["status"] for r in opened if r["study_uid"] == other] == [404]


@pytest.mark.parametrize("world", ["edge"], indirect=True)
def test_edge_login_page_takes_the_console_token_and_sets_a_strict_cookie(world: World) -> None:
    ctx = world.browser.new_context()
    try:
        page = ctx.new_page()
        sign_in(page, world.url + "/viewer/", lambda p: p.fill("#token", world.tokens["writer"]))
        (cookie,) = [c for c in ctx.cookies() if c["name"] == "hpacs_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
        assert "hpacs_session" not in page.evaluate("document.cookie")
        who = page.evaluate("fetch('/api/session').then(r => r.json())")
        assert (who["name"], who["role"], who["kind"]) == ("console-token", "admin", "token")
        # a wrong password comes back to the form with the reason, `next` kept
        ctx.clear_cookies()
        page.goto(world.url + "/viewer/viewer?StudyInstanceUIDs=1.2.3")
        page.fill("#user", "viewer")
        page.fill("#password", "wrong")
        page.click("#login-form button[type=submit]")
        page.wait_for_url(re.compile(r"/login\?error="))
        assert "wrong user name or password" in page.inner_text("#login-error")
        assert page.input_value("#next") == "/viewer/viewer?StudyInstanceUIDs=1.2.3"
    finally:
        ctx.close()
