"""shared/web/assets.py: the one handler both sides mount for shared/web's css and js."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shared.web.assets import WEB_DIR, shared_asset


async def _get_all(paths: list[str]) -> list[tuple[int, str, bytes]]:
    app = web.Application()
    app.router.add_get("/shared/{name}", shared_asset)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        out = []
        for p in paths:
            r = await client.get(p)
            out.append((r.status, r.headers.get("Content-Type", ""), await r.read()))
        return out


def test_serves_css_and_js_only_never_the_python_beside_them() -> None:
    css, js, py, dot, missing = asyncio.run(
        _get_all(
            [
                "/shared/console.css",
                "/shared/console.js",
                "/shared/session.py",
                "/shared/.console.js",
                "/shared/nothing.js",
            ]
        )
    )
    assert css == (200, "text/css", (WEB_DIR / "console.css").read_bytes())
    assert js[:2] == (200, "text/javascript") and js[2] == (WEB_DIR / "console.js").read_bytes()
    assert [py[0], dot[0], missing[0]] == [404, 404, 404]
