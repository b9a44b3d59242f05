"""Route handlers: parse the request, call one service function in a worker thread, answer.

DICOMweb is the shared implementation (`shared/dicomweb/routes.py`, also served by the edge);
this module supplies the cloud's side of it: `CloudSource` (the catalog and the bucket as one
reader sees them) and the hooks (public base URL, audit detail, STOW's site check and body
limit). Handlers never run SQL: they call the catalog (`cloud_api.catalog.Catalog`). Site scope
is applied by the catalog's search (`Principal.site_filter`), so a reader of site A never learns
that an instance of site B exists: out-of-scope studies are simply not found (404 / 204).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from aiohttp import web

from cloud_api import catalog, qido
from cloud_api.auth import ROLES, Need, Principal
from cloud_api.catalog.search import MATCHABLE
from cloud_api.stow import STOW_SITE, StowOutcome, append_catalog, store_part
from shared import control
from shared.dicomweb import media, routes, urls
from shared.dicomweb.qido import QidoQuery
from shared.dicomweb.routes import READ_THREADS as READ_THREADS  # the one pool's size
from shared.dicomweb.source import InstanceRef, StoredPart
from shared.errors import (
    BadRequest,
    InvalidField,
    NotAuthorized,
)
from shared.keys import RESTORES, check_site
from shared.restore import (
    RestorePhase,
    RestoreRequest,
    RestoreStatus,
    check_restore_id,
    new_restore_id,
)

if TYPE_CHECKING:
    from cloud_api.app import Services

PRINCIPAL = web.RequestKey("principal", Principal)
AUDIT = web.RequestKey("audit", dict)  # what the audit record should say about this request


def _svc(request: web.Request) -> Services:
    from cloud_api.app import SERVICES

    return request.app[SERVICES]


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def _base_url(request: web.Request) -> str:
    """The public DICOMweb root for URLs in responses (shared/dicomweb/urls.py decides)."""
    cfg = _svc(request).cfg
    return routes.public_root(request, _networks(tuple(cfg.trusted_proxies)), cfg.public_base_url)


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[urls.Network, ...]:
    return urls.parse_networks(cidrs)


def _json(data: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode(), status=status, content_type=content_type
    )


# ---- DICOMweb: the shared routes (shared/dicomweb/routes.py) over the catalog and the bucket ----


class CloudSource:
    """The catalog and the bucket as one reader sees them (`DicomwebSource`): its sites are
    applied by the catalog's search, so another site's study is simply not found."""

    def __init__(self, svc: Services, principal: Principal) -> None:
        self.svc = svc
        self.principal = principal
        self.sites = principal.site_filter()

    def search(self, query: QidoQuery) -> list[dict[str, Any]]:
        return self.svc.catalog.search(qido.search_of(query, self.sites))

    def instances(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[InstanceRef]:
        rows = self.svc.catalog.instances(study_uid, series_uid, sop_instance_uid, self.sites)
        return [_ref(r) for r in rows]

    def open(self, ref: InstanceRef, start: int = 0, length: int | None = None) -> BinaryIO:
        return self.svc.store.open(ref.locator, start, None if length is None else start + length)

    def store(self, path: Path, study_uid: str | None) -> StowOutcome:
        p = self.principal
        reveal = p.all_sites and p.may(Need.READ)  # else: no existence oracle (stow.py)
        return store_part(self.svc.store, path, study_uid, reveal_existing=reveal)

    def stored(self, parts: Sequence[StoredPart]) -> str:
        """One catalog object for the request under `catalog/cloud/`, applied at once."""
        outcomes = [o for o in parts if isinstance(o, StowOutcome)]
        rows = [o.row for o in outcomes if o.row is not None]
        if rows:
            cursor = self.svc.catalog.cursors().get(STOW_SITE, "")
            append_catalog(self.svc.store, rows, cursor)
            self.svc.catalog.apply(STOW_SITE, [r.to_json() for r in rows])  # QIDO sees it now
        ok = sum(o.stored for o in outcomes)
        kept = sum(1 for o in outcomes if o.kept_as)
        detail = f"STOW stored={len(rows)} failed={len(outcomes) - ok}"
        return detail + (f" conflicts_kept={kept}" if kept else "")


def _ref(row: catalog.InstanceRef) -> InstanceRef:
    """A catalog instance as the shared DICOMweb code sees it (the object key locates it)."""
    return InstanceRef(
        study_uid=row.study_uid,
        series_uid=row.series_uid,
        sop_instance_uid=row.sop_instance_uid,
        transfer_syntax=row.transfer_syntax or media.EXPLICIT_LE,
        size=row.size,
        locator=row.object_key,
        sop_class_uid=row.sop_class_uid,
        crc32c=row.crc32c,
    )


def _note(request: web.Request, detail: str, study_uids: str) -> None:
    request[AUDIT]["detail"] = detail
    if study_uids:
        request[AUDIT]["study_uid"] = study_uids


def _require_stow(request: web.Request) -> None:
    _principal(request).require(Need.WRITE, STOW_SITE)


def dicomweb_side(svc: Services) -> routes.Side:
    """The cloud's hooks into the shared DICOMweb routes."""
    cfg = svc.cfg
    return routes.Side(
        source=lambda request: CloudSource(svc, _principal(request)),
        base_url=_base_url,
        note=_note,
        max_results=cfg.query_max_results,
        spool_dir=Path(cfg.data_dir) / "tmp",
        matchable=MATCHABLE,
        max_body_bytes=cfg.max_body_bytes,
        limit_name="cloud.max_body_bytes",
        before_stow=_require_stow,
    )


# ---- admin API ----------------------------------------------------------------------------------


async def api_tokens(request: web.Request) -> web.Response:
    svc = _svc(request)
    recs = await asyncio.to_thread(svc.tokens.list)
    return _json(
        [
            {
                "name": r.name,
                "role": r.role,
                "sites": r.sites,
                "created_at": r.created_at,
                "revoked_at": r.revoked_at,
            }
            for r in recs
        ]
    )


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("the body must be JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


async def api_token_create(request: web.Request) -> web.Response:
    """Admin: a new token; its secret is in this answer only (stored as a hash)."""
    svc = _svc(request)
    body = await _json_body(request)
    name, role, sites = body.get("name"), body.get("role"), body.get("sites", [])
    if not isinstance(name, str) or not name.strip():
        raise InvalidField("name", "1-64 characters")
    if role not in ROLES:
        raise InvalidField("role", f"one of {', '.join(ROLES)}")
    if isinstance(sites, str):
        sites = [x.strip() for x in sites.split(",") if x.strip()]
    if not isinstance(sites, list) or not all(isinstance(x, str) for x in sites):
        raise InvalidField("sites", "a list of site names")
    for site in sites:
        if site != "*":
            check_site(site)
    token = await asyncio.to_thread(svc.tokens.create, name.strip(), role, sites)
    request[AUDIT]["detail"] = f"token created name={name.strip()} role={role} sites={sites}"
    return _json(
        {"name": name.strip(), "role": role, "sites": sorted(set(sites)), "token": token},
        status=201,
    )


async def api_token_revoke(request: web.Request) -> web.Response:
    svc = _svc(request)
    name = request.match_info["name"]
    await asyncio.to_thread(svc.tokens.revoke, name)
    request[AUDIT]["detail"] = f"token revoked name={name}"
    return _json({"revoked": name})


async def api_restore_create(request: web.Request) -> web.Response:
    svc, p = _svc(request), _principal(request)
    site = check_site(request.match_info["site"])
    p.require(Need.ADMIN, site)
    if site == STOW_SITE:
        raise BadRequest(f"site {STOW_SITE!r} holds STOW uploads to this API: no edge restores it")
    body = await _json_body(request) if request.can_read_body else {}  # the body is optional
    days = body.get("prefetch_days")
    if days is not None and (not isinstance(days, int) or days < 0):
        raise BadRequest("prefetch_days must be a non-negative integer")
    req = RestoreRequest(new_restore_id(), site, time.time(), p.name, days)
    await asyncio.to_thread(control.put_request, svc.store, RESTORES, site, req.id, req.to_bytes())
    request[AUDIT]["detail"] = f"restore requested site={site} id={req.id}"
    return _json(
        {
            "id": req.id,
            "site": site,
            "phase": RestorePhase.PENDING.value,
            "status_url": f"/api/sites/{site}/restores/{req.id}",
        },
        status=201,
    )


def _status(svc: Services, site: str, restore_id: str) -> dict[str, Any]:
    data = control.read_status(svc.store, RESTORES, site, restore_id)
    if data is None:
        return {"id": restore_id, "site": site, "phase": RestorePhase.PENDING.value}
    return RestoreStatus.from_bytes(data).to_json()


async def api_restore_get(request: web.Request) -> web.Response:
    svc, p = _svc(request), _principal(request)
    site = check_site(request.match_info["site"])
    p.require(Need.RESTORE_READ, site)
    rid = check_restore_id(request.match_info["restore_id"])
    return _json(await asyncio.to_thread(_status, svc, site, rid))


async def api_restore_list(request: web.Request) -> web.Response:
    svc, p = _svc(request), _principal(request)
    site = check_site(request.match_info["site"])
    if not p.may(Need.RESTORE_READ, site):
        raise NotAuthorized(f"token {p.name!r} may not read restores of site {site}")

    def collect() -> list[dict[str, Any]]:
        return [_status(svc, site, rid) for rid in control.request_ids(svc.store, RESTORES, site)]

    return _json(await asyncio.to_thread(collect))
