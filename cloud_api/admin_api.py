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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cloud_api import ops
from shared.errors import InvalidField
from shared.web.assets import shared_asset

if TYPE_CHECKING:
    from cloud_api.app import Services

CONSOLE_DIR = Path(__file__).parent / "console"
AUDIT_LIMIT_MAX = 1000
AUDIT_BLOCK_BYTES = 256 * 1024
# The shell only loads our own files and talks to our own origin.
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"


def _svc(request: web.Request) -> Services:
    from cloud_api.app import SERVICES

    return request.app[SERVICES]


def site_summaries(svc: Services) -> list[dict[str, Any]]:
    """Per site: studies, instances (from the catalog), the last applied catalog object and lag."""
    counts = {c.site: (c.studies, c.instances) for c in svc.catalog.site_counts()}
    cursors = svc.catalog.cursors()
    lags = ops.site_lags_s(svc.catalog, svc.store)
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


@dataclass(frozen=True)
class AuditQuery:
    """Filters of the console's audit page; empty fields match anything. `since`/`until` are
    epoch seconds; `token`, `action` and `outcome` match exactly, `study` is a UID prefix."""

    since: float | None = None
    until: float | None = None
    token: str = ""
    action: str = ""
    study: str = ""
    outcome: str = ""

    def matches(self, rec: dict[str, Any]) -> bool:
        t = rec.get("time", 0)
        return (
            (self.since is None or t >= self.since)
            and (self.until is None or t < self.until)
            and (not self.token or rec.get("token") == self.token)
            and (not self.action or rec.get("action") == self.action)
            and (not self.outcome or rec.get("outcome") == self.outcome)
            and (not self.study or str(rec.get("study_uid", "")).startswith(self.study))
        )


def search_audit(
    files: list[Path], q: AuditQuery, offset: int, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Matching records newest first, `offset` skipped, at most `limit`, and whether more
    match. Files are read backwards in blocks, and the walk stops at the first record older
    than `since` (records are appended in time order), so a recent page costs a few blocks."""
    out: list[dict[str, Any]] = []
    skipped = 0
    for path in reversed(files):
        for rec in _records_backwards(path):
            if q.since is not None and rec.get("time", 0) < q.since:
                return out, False
            if not q.matches(rec):
                continue
            if skipped < offset:
                skipped += 1
                continue
            if len(out) == limit:
                return out, True
            out.append({k: v for k, v in rec.items() if k not in ("prev", "mac", "key")})
    return out, False


def _records_backwards(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as fh:
        pos = fh.seek(0, os.SEEK_END)
        tail = b""
        while pos > 0:
            step = min(AUDIT_BLOCK_BYTES, pos)
            pos -= step
            fh.seek(pos)
            lines = (fh.read(step) + tail).split(b"\n")
            tail = lines[0]  # may be cut: completed by the next block
            for raw in reversed(lines[1:]):
                rec = _parse(raw)
                if rec is not None:
                    yield rec
        rec = _parse(tail)
        if rec is not None:
            yield rec


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw)
    except ValueError:
        return None  # empty, or a torn last write
    return rec if isinstance(rec, dict) else None


def _float_param(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name, "")
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError as exc:
        raise InvalidField(name, "epoch seconds") from exc


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise InvalidField(name, f"an integer {lo}-{hi}")
    return int(raw)


async def api_audit(request: web.Request) -> web.Response:
    """Admin: audit events of this replica, newest first, filtered (`since`, `until`, `token`,
    `action`, `study`, `outcome`) and paged on the server (`offset`, `limit`). Open windows of
    refused requests are recorded first, so an admin never reads a trail that hides a flood."""
    from cloud_api.app import record_denials

    svc = _svc(request)
    limit = _int_param(request, "limit", 50, 1, AUDIT_LIMIT_MAX)
    offset = _int_param(request, "offset", 0, 0, 10**9)
    q = AuditQuery(
        since=_float_param(request, "since"),
        until=_float_param(request, "until"),
        token=request.query.get("token", ""),
        action=request.query.get("action", ""),
        study=request.query.get("study", ""),
        outcome=request.query.get("outcome", ""),
    )
    record_denials(svc, all_now=True)
    recs, more = await asyncio.to_thread(search_audit, svc.audit.files(), q, offset, limit)
    return web.json_response(
        {
            "replica": svc.audit.replica,
            "events": recs,
            "offset": offset,
            "limit": limit,
            "more": more,
        }
    )


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


def mount_console(app: web.Application) -> frozenset[Any]:
    """Add the console shell; returns its resources, the only public ones besides the probes."""
    r = app.router
    index = r.add_get("/console", console_index, allow_head=False).resource
    root = r.add_get("/", console_redirect, allow_head=False).resource  # a bare host: the console
    assets = r.add_static("/console/assets/", CONSOLE_DIR)
    look = r.add_get("/console/shared/{name}", shared_asset, allow_head=False).resource
    return frozenset({root, index, assets, look})
