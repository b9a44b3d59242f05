"""The aiohttp application: route table, authentication/audit middleware, catalog polling.

Deny by default: the middleware authenticates every request before routing matters, and a
matched route must appear in `NEEDS` (what it requires) or it answers 403 even to an admin.
Every request with a valid token is an audit event; requests refused before that (no valid
token) are counted per client address and window (`cloud_api/denials.py`), one event each.

google-cloud-storage and the catalog backends are synchronous: every store and catalog call runs
in a worker thread (`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from cloud_api import admin_api, deletions, ops
from cloud_api import handlers as h
from cloud_api import session as se
from cloud_api import shares as sh
from cloud_api.audit import AuditLog, audit_key
from cloud_api.auth import Need, Principal, TokenStore
from cloud_api.catalog import Catalog, open_catalog
from cloud_api.catalog.poller import Poller
from cloud_api.denials import DenialGate
from shared import health, metrics
from shared.config import CloudConfig, RestoreConfig, RetentionConfig
from shared.dicomweb import routes as dw
from shared.errors import (
    NotAuthorized,
    NotFound,
    ObjectStoreError,
    PacsError,
    TooManyRequests,
    TransientStoreError,
    Unauthenticated,
    http_status,
    problem_json,
)
from shared.store.base import ObjectStore, open_store
from shared.web import viewer
from shared.web.session import Credentials

log = logging.getLogger("hpacs.cloud.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# DICOMweb: the shared routes (shared/dicomweb/routes.py), READ for QIDO/WADO, WRITE for STOW
ACCESS = {dw.Access.READ: Need.READ, dw.Access.WRITE: Need.WRITE}
S = dw.ROOT + dw.S  # for cloud-only routes beside the shared ones
SE = dw.ROOT + dw.SE
IN = dw.ROOT + dw.IN

# method, path, handler, need, audit action
ROUTES: list[tuple[str, str, Handler, Need, str]] = [
    *((m, dw.ROOT + p, fn, ACCESS[a], action) for m, p, fn, a, action in dw.ROUTES),
    # deletion (cloud_api/deletions.py): a request per site holding it, applied by its agent
    ("DELETE", S, deletions.dicomweb_delete, Need.ADMIN, "delete"),
    ("DELETE", SE, deletions.dicomweb_delete, Need.ADMIN, "delete"),
    ("DELETE", IN, deletions.dicomweb_delete, Need.ADMIN, "delete"),
    (
        "GET",
        "/api/sites/{site}/deletions/{deletion_id}",
        deletions.api_deletion_get,
        Need.ADMIN,
        "delete-status",
    ),
    ("GET", "/api/sites", admin_api.api_sites, Need.ADMIN, "sites"),
    ("GET", "/api/tokens", h.api_tokens, Need.ADMIN, "tokens"),
    ("POST", "/api/tokens", h.api_token_create, Need.ADMIN, "token-create"),
    ("DELETE", "/api/tokens/{name}", h.api_token_revoke, Need.ADMIN, "token-revoke"),
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
    ("GET", "/api/session", se.api_session, Need.READ, "session"),
    ("POST", "/api/session", se.api_session_create, Need.READ, "session-create"),
    ("POST", "/api/shares", sh.api_share_create, Need.SHARE, "share-create"),
    ("GET", "/api/shares", sh.api_share_list, Need.SHARE, "share-list"),
    ("DELETE", "/api/shares/{share_id}", sh.api_share_revoke, Need.SHARE, "share-revoke"),
]


@dataclass
class Services:
    """What handlers use; one per app."""

    cfg: CloudConfig
    restore: RestoreConfig
    retention: RetentionConfig  # delete_grace_days of the cloud's own STOW site
    store: ObjectStore
    catalog: Catalog
    poller: Poller
    tokens: TokenStore
    audit: AuditLog
    audit_store: ObjectStore  # where audit segments and checkpoints go (cloud.audit_store_url)
    denials: DenialGate
    shares: sh.ShareStore
    sessions: se.Sessions


SERVICES = web.AppKey("services", Services)
NEEDS = web.AppKey("needs", dict)
# the console's and the viewer's static shells, the login page, share links: no data, no token
PUBLIC = web.AppKey("public", frozenset)


def problem(err: BaseException) -> web.Response:
    status = http_status(err)
    resp = web.json_response(
        problem_json(err), status=status, content_type="application/problem+json"
    )
    if isinstance(err, Unauthenticated):
        resp.headers["WWW-Authenticate"] = 'Bearer realm="hpacs"'
    if isinstance(err, TooManyRequests):
        resp.headers["Retry-After"] = str(max(1, math.ceil(err.retry_after_s)))
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
    try:  # bearer token or session cookie (cloud_api/session.py)
        principal = await asyncio.to_thread(svc.sessions.authenticate, Credentials.of(request))
    except Unauthenticated as exc:
        wait = svc.denials.deny(client, f"{request.method} {request.path}")
        if wait:
            return problem(TooManyRequests("too many refused requests", retry_after_s=wait))
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
    next_purge = 0.0
    while True:
        await asyncio.sleep(svc.cfg.catalog_poll_interval_s)
        try:
            res = await asyncio.to_thread(svc.poller.poll)
            if res.rows:
                log.info("catalog poll objects=%d rows=%d", res.objects, res.rows)
            # the STOW site's deletions past their grace (any replica may: it is idempotent)
            if time.monotonic() >= next_purge:
                await asyncio.to_thread(deletions.purge_due, svc)
                next_purge = time.monotonic() + svc.retention.purge_interval_s
        except PacsError as exc:
            log.warning("catalog poll failed error=%s hint=%s", exc, exc.hint)
        except Exception:
            log.exception("catalog poll failed")


async def _on_startup(app: web.Application) -> None:
    """Bring the catalog up to date before the port opens when the store answers, so no replica
    answers from a partial catalog (on PostgreSQL a replica that does not hold the lead starts
    at once: another replica applies). When the store does not answer (its emulator or bucket
    comes up after us), open the port anyway, alive but not ready (/readyz and data routes
    503), and catch up in the background once it answers: never exit for a store that is not
    ready yet."""
    startup = app[ops.STARTUP]
    if not await _build_index(app):
        startup.task = asyncio.create_task(_build_when_ready(app))


async def _build_index(app: web.Application) -> bool:
    svc, startup = app[SERVICES], app[ops.STARTUP]
    if not await asyncio.to_thread(startup.store.check):
        return False
    try:
        res = await asyncio.to_thread(svc.poller.poll)
    except (ObjectStoreError, NotFound) as exc:  # gone again mid-build: wait once more
        startup.store.ready = False
        startup.store.reason = f"{type(exc).__name__}: {exc}"[:200]
        return False
    log.info(
        "catalog ready url=%s applied=%s objects=%d rows=%d seconds=%.2f",
        _safe_url(svc.catalog.url),
        res.applied,
        res.objects,
        res.rows,
        res.seconds,
    )
    startup.index_built = True
    app[POLLER] = asyncio.create_task(_poll_loop(app))
    return True


async def _build_when_ready(app: web.Application) -> None:
    for delay in health.retry_delays():
        await asyncio.sleep(delay)
        if await _build_index(app):
            return


@web.middleware
async def starting(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Until the catalog is current, every route but the probes and the console shell
    answers 503 (inside the guard: authenticated and audited like any other answer)."""
    if (
        not request.app[ops.STARTUP].index_built
        and request.path not in ops.OPEN_PATHS
        and request.match_info.route.resource not in request.app[PUBLIC]
    ):
        raise TransientStoreError(
            "starting: the catalog is not current yet (the object store is not ready)"
        )
    return await handler(request)


async def _on_cleanup(app: web.Application) -> None:
    svc = app[SERVICES]
    for task in (app[ops.STARTUP].task, app.get(POLLER)):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    svc.catalog.close()


POLLER = web.AppKey("poller", asyncio.Task)

AUDIT_TICK_S = 1.0


def record_denials(svc: Services, *, all_now: bool = False) -> int:
    """Write one record per client address of the ended window (all of them with `all_now`)."""
    tallies = svc.denials.drain() if all_now else svc.denials.due()
    for t in tallies:
        svc.audit.record(
            action="denied",
            outcome="denied",
            client=t.client,
            status=t.status,
            detail=t.detail(svc.cfg.denied_window_s),
            count=t.count,
        )
    return len(tallies)


async def _audit_housekeeping(app: web.Application) -> Any:
    """Records ended windows of refused requests and ships the trail every
    `cloud.audit_ship_interval_s`; at shutdown records every open window, ships and closes.
    A cleanup context registered at creation: it starts before the catalog is current (the trail
    must run while start-up waits for the bucket) and stops before the catalog closes."""
    svc = app[SERVICES]

    async def tick() -> None:
        while True:
            await asyncio.sleep(AUDIT_TICK_S)
            try:
                record_denials(svc)
                await asyncio.to_thread(
                    svc.audit.ship_due, svc.audit_store, svc.cfg.audit_ship_interval_s
                )
            except Exception:
                log.exception("audit housekeeping failed")

    task = asyncio.create_task(tick())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    record_denials(svc, all_now=True)
    try:
        await asyncio.to_thread(svc.audit.ship, svc.audit_store)
    except Exception:
        log.exception("shipping the audit log at shutdown failed")
    svc.audit.close()


def _audit_store(cfg: CloudConfig, store: ObjectStore) -> ObjectStore:
    return open_store(cfg.audit_store_url) if cfg.audit_store_url else store


def create_app(
    cfg: CloudConfig,
    store: ObjectStore,
    restore: RestoreConfig | None = None,
    audit_store: ObjectStore | None = None,
    retention: RetentionConfig | None = None,
) -> web.Application:
    """The app for one replica; its audit log (and a SQLite catalog) live under `cfg.data_dir`.
    Refuses (ConfigError) an audit key file that others may read."""
    data = Path(cfg.data_dir)
    tokens, shares = TokenStore(cfg.tokens_file), sh.ShareStore(store)
    catalog = open_catalog(cfg.catalog, data, pool_size=cfg.catalog_pool_size)
    svc = Services(
        cfg=cfg,
        restore=restore or RestoreConfig(),
        retention=retention or RetentionConfig(),
        store=store,
        catalog=catalog,
        poller=Poller(catalog, store),
        tokens=tokens,
        audit=AuditLog(data, audit_key(cfg, create=True), max_bytes=cfg.audit_max_bytes),
        audit_store=audit_store or _audit_store(cfg, store),
        denials=DenialGate(
            window_s=cfg.denied_window_s,
            rate_per_s=cfg.denied_rate_per_s,
            burst=cfg.denied_burst,
            max_clients=cfg.denied_max_clients,
        ),
        shares=shares,
        sessions=se.Sessions(cfg, tokens, shares),
    )
    app = web.Application(
        middlewares=[metrics.http_metrics_middleware(), cors, guard, starting, sh.scope],
        client_max_size=1024**2,
    )
    app[SERVICES] = svc
    app[ops.STARTUP] = ops.Startup(health.StoreReadiness(store, log))
    dw.attach(app, h.dicomweb_side(svc))  # one bounded read pool and the metadata cache
    needs: dict[Any, tuple[Need, str]] = {}
    for method, path, handler, need, action in ROUTES:
        route = app.router.add_route(method, path, handler)
        needs[route] = (need, action)
    ops.mount(app, SERVICES, needs)  # /healthz, /readyz, /metrics
    app[PUBLIC] = (
        admin_api.mount_console(app)  # /console: HTML/JS/CSS, data only via /api
        | se.mount_public(app)  # /login, /logout, /share/{token}: each audits itself
        | _mount_viewer(app, cfg, svc.sessions)  # /viewer/: the OHIF build, no data
    )
    app[NEEDS] = needs
    app.on_response_prepare.append(_on_prepare)
    app.cleanup_ctx.append(_audit_housekeeping)  # before on_startup/on_cleanup: see its docstring
    app.on_startup.append(_on_startup)
    app.on_cleanup.append(_on_cleanup)
    return app


def _mount_viewer(app: web.Application, cfg: CloudConfig, sessions: se.Sessions) -> frozenset[Any]:
    """The OHIF viewer at /viewer/ on this origin's /dicomweb; absent build: a 503 that says
    how to install it (the API itself still serves)."""
    try:
        dist = viewer.locate_build(cfg.viewer_dir)
    except viewer.ViewerBuildMissing as exc:
        log.warning("viewer not served error=%s", exc)
        reason = str(exc)

        async def missing(request: web.Request) -> web.Response:
            return web.Response(status=503, text=reason)

        return frozenset({app.router.add_get("/viewer/{tail:.*}", missing).resource})
    settings = viewer.ViewerSettings(dist=dist, login_path=se.LOGIN_PATH)
    return viewer.mount(app, settings, sessions.authorized)


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
