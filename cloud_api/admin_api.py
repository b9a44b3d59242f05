"""Admin JSON endpoints behind the cloud console, and the console's static shell.

The shell (HTML, JS, CSS) is public: a browser cannot send a bearer token when it navigates, and
the shell holds no data. Every data call it makes goes to `/api/*` with the token from
sessionStorage and passes the guard like any other request (admin need, audited). The public
routes are exactly the ones `mount_console` returns; the guard lets only those through untouched.

No patient names, IDs or birth dates here: sites are counts, the audit trail carries study UIDs.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

import shared
from cloud_api import ops
from shared.errors import BadRequest

if TYPE_CHECKING:
    from cloud_api.app import Services

CONSOLE_DIR = Path(__file__).parent / "console"
SHARED_WEB_DIR = Path(shared.__file__).parent / "web"
AUDIT_LIMIT_MAX = 1000
AUDIT_TAIL_BYTES = 512 * 1024
# The shell only loads our own files and talks to our own origin.
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"


def _svc(request: web.Request) -> Services:
    from cloud_api.app import SERVICES

    return request.app[SERVICES]


def site_summaries(svc: Services) -> list[dict[str, Any]]:
    """Per site: studies, instances (from the index), the last applied catalog object and lag."""
    counts = {
        r[0]: (r[1], r[2] or 0)
        for r in svc.index.reader().execute(
            "SELECT site, count(*), sum(num_instances) FROM studies GROUP BY site"
        )
    }
    cursors = svc.index.cursors()
    lags = ops.site_lags_s(svc.index, svc.store)
    out = []
    for site in sorted(set(cursors) | set(counts)):
        key = cursors.get(site, "")
        info = svc.store.head(key) if key else None
        studies, instances = counts.get(site, (0, 0))
        out.append(
            {
                "site": site,
                "studies": studies,
                "instances": instances,
                "last_catalog_key": key,
                "last_catalog_at": info.updated if info is not None else None,
                "lag_s": round(lags.get(site, 0.0), 3),
            }
        )
    return out


async def api_sites(request: web.Request) -> web.Response:
    """Admin: every site the catalog knows, with counts and how current this replica is."""
    svc = _svc(request)
    return web.json_response({"sites": await asyncio.to_thread(site_summaries, svc)})


def recent_audit(files: list[Path], limit: int) -> list[dict[str, Any]]:
    """The last `limit` records, newest first, read from the end of the newest files (the log
    only grows; a rotation may have just started a new file)."""
    out: list[dict[str, Any]] = []
    for path in reversed(files):
        out.extend(_tail(path, limit - len(out)))
        if len(out) >= limit:
            break
    return out


def _tail(path: Path, limit: int) -> list[dict[str, Any]]:
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        start = max(0, size - AUDIT_TAIL_BYTES)
        fh.seek(start)
        lines = fh.read().split(b"\n")
    if start > 0:
        lines = lines[1:]  # cut in the middle
    out: list[dict[str, Any]] = []
    for raw in reversed(lines):
        if len(out) >= limit:
            break
        try:
            rec = json.loads(raw)
        except ValueError:
            continue  # empty, or a torn last write
        if isinstance(rec, dict):
            out.append({k: v for k, v in rec.items() if k not in ("prev", "mac", "key")})
    return out


async def api_audit(request: web.Request) -> web.Response:
    """Admin: recent audit events of this replica, newest first. Open windows of refused
    requests are recorded first, so an admin never reads a trail that hides a flood."""
    from cloud_api.app import record_denials

    svc = _svc(request)
    try:
        limit = int(request.query.get("limit", "200"))
    except ValueError as exc:
        raise BadRequest("limit must be an integer") from exc
    if not 1 <= limit <= AUDIT_LIMIT_MAX:
        raise BadRequest(f"limit must be 1-{AUDIT_LIMIT_MAX}")
    record_denials(svc, all_now=True)
    recs = await asyncio.to_thread(recent_audit, svc.audit.files(), limit)
    return web.json_response({"replica": svc.audit.replica, "events": recs})


async def api_audit_verify(request: web.Request) -> web.Response:
    """Admin: the report `hpacs-cloud audit verify` prints: the chain under its key, against
    every checkpoint in the bucket; `?bucket=1` also compares each record with its shipped
    copy (`--bucket`)."""
    svc = _svc(request)
    segments = request.query.get("bucket", "") in ("1", "true")
    report = await asyncio.to_thread(svc.audit.verify, svc.audit_store, segments=segments)
    return web.json_response(report.to_json())


async def console_index(request: web.Request) -> web.FileResponse:
    resp = web.FileResponse(CONSOLE_DIR / "index.html")
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["Cache-Control"] = "no-cache"
    return resp


async def console_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console")


SHARED_ASSETS = {".css": "text/css", ".js": "text/javascript"}


async def shared_asset(request: web.Request) -> web.FileResponse:
    """A style sheet or script of shared/web (its Python modules live there too: not served)."""
    name = request.match_info["name"]
    path = SHARED_WEB_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in SHARED_ASSETS:
        raise web.HTTPNotFound()
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Content-Type": SHARED_ASSETS[path.suffix]})


def mount_console(app: web.Application) -> frozenset[Any]:
    """Add the console shell; returns its resources, the only public ones besides the probes."""
    r = app.router
    index = r.add_get("/console", console_index, allow_head=False).resource
    root = r.add_get("/", console_redirect, allow_head=False).resource  # a bare host: the console
    assets = r.add_static("/console/assets/", CONSOLE_DIR)
    look = r.add_get("/console/shared/{name}", shared_asset, allow_head=False).resource
    return frozenset({root, index, assets, look})
