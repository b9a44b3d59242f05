"""The style sheets and scripts of shared/web, served by both sides' consoles and login pages.

Each side mounts `shared_asset` under its own prefix (`/shared/` on the edge, `/console/shared/`
on the cloud API); only files with a listed suffix are served, so the Python modules beside
them are not.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).parent
CONTENT_TYPES = {".css": "text/css", ".js": "text/javascript"}


async def shared_asset(request: web.Request) -> web.FileResponse:
    """A style sheet or script of shared/web by its `{name}` in the route."""
    name = request.match_info["name"]
    path = WEB_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in CONTENT_TYPES:
        raise web.HTTPNotFound()
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Content-Type": CONTENT_TYPES[path.suffix]})
