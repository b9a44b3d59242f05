"""The aiohttp application: route table, authentication/audit middleware, catalog polling.

Deny by default: the middleware authenticates every request before routing matters, and a
matched route must appear in `NEEDS` (what it requires) or it answers 403 even to an admin.
Every request that reaches a route, and every denied one, is an audit event.

google-cloud-storage and the catalog backends are synchronous: every store and catalog call runs
in a worker thread (`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from cloud_api import admin_api, ops
from cloud_api import handlers as h
from cloud_api.audit import AuditLog
from cloud_api.auth import Need, Principal, TokenStore
from cloud_api.catalog import Catalog, open_catalog
from cloud_api.catalog.poller import Poller
from shared import metrics
from shared.config import CloudConfig, RestoreConfig
from shared.errors import (
    NotAuthorized,
    ObjectStoreError,
    PacsError,
    Unauthenticated,
    http_status,
    problem_json,
)
from shared.store.base import ObjectStore

log = logging.getLogger("hpacs.cloud.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

S = "/dicomweb/studies/{study}"
SE = S + "/series/{series}"
IN = SE + "/instances/{instance}"

# method, path, handler, need, audit action
ROUTES: list[tuple[str, str, Handler, Need, str]] = [
    ("GET", "/dicomweb/studies", h.qido_studies, Need.READ, "qido"),
    ("GET", "/dicomweb/series", h.qido_series, Need.READ, "qido"),
    ("GET", "/dicomweb/instances", h.qido_instances, Need.READ, "qido"),
    ("GET", S + "/series", h.qido_series, Need.READ, "qido"),
    ("GET", S + "/instances", h.qido_instances, Need.READ, "qido"),
    ("GET", SE + "/instances", h.qido_instances, Need.READ, "qido"),
    ("GET", S, h.wado_retrieve, Need.READ, "wado"),
    ("GET", SE, h.wado_retrieve, Need.READ, "wado"),
    ("GET", IN, h.wado_retrieve, Need.READ, "wado"),
    ("GET", S + "/metadata", h.wado_metadata, Need.READ, "wado-metadata"),
    ("GET", SE + "/metadata", h.wado_metadata, Need.READ, "wado-metadata"),
    ("GET", IN + "/metadata", h.wado_metadata, Need.READ, "wado-metadata"),
    ("GET", IN + "/frames/{frames}", h.wado_frames, Need.READ, "wado-frames"),
    ("GET", IN + "/frames/{frames}/rendered", h.wado_rendered, Need.READ, "wado-rendered"),
    ("GET", IN + "/rendered", h.wado_rendered, Need.READ, "wado-rendered"),
    ("GET", IN + "/thumbnail", h.wado_thumbnail, Need.READ, "wado-thumbnail"),
    ("GET", S + "/thumbnail", h.wado_thumbnail, Need.READ, "wado-thumbnail"),
    ("GET", SE + "/thumbnail", h.wado_thumbnail, Need.READ, "wado-thumbnail"),
    ("GET", IN + "/bulkdata/{tag}", h.wado_bulkdata, Need.READ, "wado-bulkdata"),
    ("POST", "/dicomweb/studies", h.stow, Need.WRITE, "stow"),
    ("POST", S, h.stow, Need.WRITE, "stow"),
    ("GET", "/api/sites", admin_api.api_sites, Need.ADMIN, "sites"),
    ("GET", "/api/tokens", h.api_tokens, Need.ADMIN, "tokens"),
    ("GET", "/api/audit", admin_api.api_audit, Need.ADMIN, "audit-read"),
    ("GET", "/api/audit/verify", admin_api.api_audit_verify, Need.ADMIN, "audit-verify"),
    ("POST", "/api/sites/{site}/restores", h.api_restore_create, Need.ADMIN, "restore"),
    ("GET", "/api/sites/{site}/restores", h.api_restore_list, Need.RESTORE_READ, "restore-list"),
    (
        "GET",
        "/api/sites/{site}/restores/{restore_id}",
        h.api_restore_get,
        Need.RESTORE_READ,
        "restore-status",
    ),
]


@dataclass
class Services:
    """What handlers use; one per app."""

    cfg: CloudConfig
    restore: RestoreConfig
    store: ObjectStore
    catalog: Catalog
    poller: Poller
    tokens: TokenStore
    audit: AuditLog


SERVICES = web.AppKey("services", Services)
NEEDS = web.AppKey("needs", dict)
PUBLIC = web.AppKey("public", frozenset)  # the console shell's resources: no data, no token


def problem(err: BaseException) -> web.Response:
    status = http_status(err)
    resp = web.json_response(
        problem_json(err), status=status, content_type="application/problem+json"
    )
    if isinstance(err, Unauthenticated):
        resp.headers["WWW-Authenticate"] = 'Bearer realm="hpacs"'
    return resp


CORS_ALLOW_HEADERS = "Authorization, Accept, Content-Type"
CORS_EXPOSE_HEADERS = "Content-Type, Content-Length, Warning, Location"


def _cors_origin(request: web.Request) -> str:
    origin = request.headers.get("Origin", "")
    allowed = request.app[SERVICES].cfg.cors_origins
    return origin if origin and (origin in allowed or "*" in allowed) else ""


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Preflights from browser viewers (OHIF) on the origins in `cloud.cors_origins`. A
    preflight carries no credentials and gets no data, only which methods and headers the real
    request may use; the real request still passes the guard."""
    if (
        request.method == "OPTIONS"
        and "Access-Control-Request-Method" in request.headers
        and _cors_origin(request)
    ):
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            },
        )
    return await handler(request)


async def _on_prepare(request: web.Request, resp: web.StreamResponse) -> None:
    """CORS headers on every response to an allowed origin, streamed ones included."""
    origin = _cors_origin(request)
    if origin:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
        resp.headers["Vary"] = "Origin"


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate, check the route's declared need, run, map errors, audit."""
    if request.path in ops.OPEN_PATHS:  # kubelet probes: no credentials, no data
        return await handler(request)
    if request.match_info.route.resource in request.app[PUBLIC]:  # console shell: static files
        return await handler(request)
    svc = request.app[SERVICES]
    client = request.remote or ""
    route = request.match_info.route
    action = request.app[NEEDS].get(route, (None, "unrouted"))[1]
    try:
        principal = await asyncio.to_thread(
            svc.tokens.authenticate, request.headers.get("Authorization")
        )
    except Unauthenticated as exc:
        svc.audit.record(
            action=action,
            outcome="denied",
            client=client,
            status=401,
            detail=f"{request.method} {request.path}",
        )
        return problem(exc)
    request[h.PRINCIPAL] = principal
    request[h.AUDIT] = {}
    need = request.app[NEEDS].get(route, (None, ""))[0]
    status, outcome = 500, "error"
    try:
        if need is None:
            if request.match_info.http_exception is not None:
                raise request.match_info.http_exception
            raise NotAuthorized("this route declares no access rule")  # fail closed
        principal.require(need)
        resp = await handler(request)
        status, outcome = resp.status, "ok" if resp.status < 400 else "error"
        return resp
    except web.HTTPException as exc:
        status, outcome = exc.status, "error"
        raise
    except PacsError as exc:
        status = http_status(exc)
        outcome = "denied" if status in (401, 403) else "error"
        if status >= 500:
            log.warning("request failed path=%s error=%s hint=%s", request.path, exc, exc.hint)
        return problem(exc)
    except (ConnectionResetError, asyncio.CancelledError):
        status, outcome = 499, "aborted"
        raise
    except Exception as exc:
        log.exception("unexpected error path=%s", request.path)
        return problem(exc)
    finally:
        _audit(svc, request, principal, action, outcome, status, client)


def _audit(
    svc: Services,
    request: web.Request,
    p: Principal,
    action: str,
    outcome: str,
    status: int,
    client: str,
) -> None:
    info = request.get(h.AUDIT, {})
    study = info.get("study_uid") or request.match_info.get("study", "")
    svc.audit.record(
        action=action,
        outcome=outcome,
        token=p.name,
        role=p.role,
        client=client,
        study_uid=study,
        status=status,
        detail=info.get("detail", f"{request.method} {request.path}"),
    )


async def _poll_loop(app: web.Application) -> None:
    svc = app[SERVICES]
    while True:
        await asyncio.sleep(svc.cfg.catalog_poll_interval_s)
        try:
            res = await asyncio.to_thread(svc.poller.poll)
            if res.rows:
                log.info("catalog poll objects=%d rows=%d", res.objects, res.rows)
            await asyncio.to_thread(svc.audit.ship, svc.store)
        except PacsError as exc:
            log.warning("catalog poll failed error=%s hint=%s", exc, exc.hint)
        except Exception:
            log.exception("catalog poll failed")


async def _on_startup(app: web.Application) -> None:
    """Bring the catalog up to date before the port opens, so no replica answers from a partial
    index. On PostgreSQL a replica that does not hold the lead starts at once: the shared
    database is already current (another replica applies)."""
    svc = app[SERVICES]
    delay = STARTUP_RETRY_INITIAL_S
    while True:  # the bucket (or its emulator, under `make up`) may come up after us
        try:
            res = await asyncio.to_thread(svc.poller.poll)
            break
        except ObjectStoreError as exc:
            log.warning(
                "object store not answering; catalog not current, retry in %.1fs error=%s hint=%s",
                delay,
                exc,
                exc.hint,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, STARTUP_RETRY_MAX_S)
    log.info(
        "catalog ready url=%s applied=%s objects=%d rows=%d seconds=%.2f",
        _safe_url(svc.catalog.url),
        res.applied,
        res.objects,
        res.rows,
        res.seconds,
    )
    app[POLLER] = asyncio.create_task(_poll_loop(app))


STARTUP_RETRY_INITIAL_S = 0.2
STARTUP_RETRY_MAX_S = 10.0


async def _on_cleanup(app: web.Application) -> None:
    svc = app[SERVICES]
    task = app.get(POLLER)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    try:
        await asyncio.to_thread(svc.audit.ship, svc.store)
    except Exception:
        log.exception("shipping the audit log at shutdown failed")
    svc.audit.close()
    svc.catalog.close()


POLLER = web.AppKey("poller", asyncio.Task)


def create_app(
    cfg: CloudConfig, store: ObjectStore, restore: RestoreConfig | None = None
) -> web.Application:
    """The app for one replica; its audit log (and a SQLite catalog) live under `cfg.data_dir`."""
    data = Path(cfg.data_dir)
    catalog = open_catalog(cfg.catalog, data, pool_size=cfg.catalog_pool_size)
    svc = Services(
        cfg=cfg,
        restore=restore or RestoreConfig(),
        store=store,
        catalog=catalog,
        poller=Poller(catalog, store),
        tokens=TokenStore(cfg.tokens_file),
        audit=AuditLog(data),
    )
    app = web.Application(
        middlewares=[metrics.http_metrics_middleware(), cors, guard], client_max_size=1024**2
    )
    app[SERVICES] = svc
    needs: dict[Any, tuple[Need, str]] = {}
    for method, path, handler, need, action in ROUTES:
        route = app.router.add_route(method, path, handler)
        needs[route] = (need, action)
    ops.mount(app, SERVICES, needs)  # /healthz, /readyz, /metrics
    app[PUBLIC] = admin_api.mount_console(app)  # /console: HTML/JS/CSS, data only via /api
    app[NEEDS] = needs
    app.on_response_prepare.append(_on_prepare)
    app.on_startup.append(_on_startup)
    app.on_cleanup.append(_on_cleanup)
    return app


def _safe_url(url: str) -> str:
    """A catalog URL for logs: without a password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        cred, _, host = rest.rpartition("@")
        rest = cred.split(":", 1)[0] + "@" + host
    return scheme + sep + rest


def ssl_context(cfg: CloudConfig) -> ssl.SSLContext | None:
    if not cfg.tls_cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file or None)
    return ctx
