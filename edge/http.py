"""The edge's HTTP side: console, JSON API, /metrics and health, on its own thread and loop.

The DIMSE path stays synchronous (docs/ARCHITECTURE.md); aiohttp runs here in a dedicated
thread with its own event loop, so a slow browser never touches an association thread.

Access: every `/api` and `/dicomweb` route is in the route table (`EdgeHttp.routes`) with the
`Need` it requires (edge/webauth.py); a request needs the console token (`Authorization:
Bearer`, full admin) or a session cookie from signing in (`POST /login`, a local user or the
token), and a route without a declared need is refused even to an admin (deny by default; the
walking test in tests/test_edge_roles.py). DICOMweb (the shared routes, edge/dicomweb.py):
reads need `view` (every role), STOW needs `operate` (technician, admin); reads of patient data
are audited, aggregated per user, client and study (edge/accesslog.py). Public, with no data:
the console's static files, the OHIF viewer's shell under `/viewer/` (its page sends a browser
without a credential to `/login`), `/login`, `/logout`, and `/metrics`, `/healthz`, `/readyz`,
open by design: Prometheus and the service manager probe them without credentials, they carry
no patient data, and the listener binds to loopback (`edge.http_host = 127.0.0.1`) unless an
admin widens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from edge import commitqueue, dashboard, webviewer
from edge import dicomweb as edw
from edge.accesslog import AccessLog
from edge.admin_api import PRINCIPAL, AdminApi, read_json
from edge.audit import EdgeAudit
from edge.correction_api import CorrectionApi
from edge.diskprobe import DiskProbe
from edge.ingest import Ingestor
from edge.locate import Locator, Recaller
from edge.slots import AssocSlots
from edge.studies_api import StudiesApi
from edge.webauth import TOKEN_ACTOR, Need, Principal, WebAuth
from shared import health
from shared.config import Config
from shared.dicomweb import routes as dw
from shared.errors import (
    BadRequest,
    NotAuthorized,
    NotFound,
    PacsError,
    TooManyRequests,
    Unauthenticated,
    http_status,
    problem_json,
)
from shared.index import Database
from shared.metrics import CONTENT_TYPE, edge_registry, render
from shared.registry import get_node
from shared.store import open_store
from shared.store.base import ObjectStore
from shared.uids import is_valid_uid
from shared.web import session as ws
from shared.web.assets import shared_asset
from shared.web.session import Credentials, clear_cookie, set_cookie

log = logging.getLogger("hpacs.edge.http")

CONSOLE_DIR = Path(__file__).parent / "console"
HOUSEKEEPING_TICK_S = 1.0
NEEDS = web.AppKey("needs", dict)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The console page loads only our own files and talks only to our own origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def token_path(cfg: Config) -> Path:
    return Path(cfg.edge.console_token_file or Path(cfg.edge.data_dir) / "console_token")


def ensure_token(cfg: Config) -> tuple[str, bool]:
    """The console token, generated on first start (mode 0600); True when just created."""
    path = token_path(cfg)
    try:
        token = path.read_text().strip()
        if token:
            return token, False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, True


def start_http(
    cfg: Config,
    db: Database,
    active: Callable[[], int],
    *,
    ingestor: Ingestor,
    recaller: Recaller | None,
) -> EdgeHttp | None:
    """Start the HTTP side for `hpacs-edge serve`; None when edge.http_port is 0. DICOMweb
    stores through `ingestor` (the one ingest path, routing attached) and reads evicted
    instances back through `recaller`.

    On first start the console token is generated and printed once to stderr, so the admin
    who started the service sees it; it is never logged.
    """
    if not cfg.edge.http_port:
        log.info("http disabled: edge.http_port = 0")
        return None
    token, created = ensure_token(cfg)
    if created:
        print(
            f"hpacs-edge: console token (stored in {token_path(cfg)}): {token}",
            file=sys.stderr,
            flush=True,
        )
    http = EdgeHttp(cfg, db, active, ingestor=ingestor, recaller=recaller, token=token)
    http.start()
    return http


class EdgeHttp:
    """aiohttp app on `edge.http_host:edge.http_port`, run in a thread with its own loop."""

    def __init__(
        self,
        cfg: Config,
        db: Database,
        active: Callable[[], int],
        *,
        ingestor: Ingestor,
        recaller: Recaller | None = None,
        token: str | None = None,
        audit: EdgeAudit | None = None,
    ) -> None:
        self.cfg = cfg
        self.db = db
        self.active = active
        self.token = token if token is not None else ensure_token(cfg)[0]
        self.auth = WebAuth(cfg.edge, db, self.token)
        self.audit = audit if audit is not None else EdgeAudit(cfg)
        self._own_audit = audit is None
        self.admin = AdminApi(cfg, db, self.audit)
        self.studies = StudiesApi(cfg, db, self.audit)
        self.corrections = CorrectionApi(cfg, db, self.audit)
        locator = Locator(db, ingestor.cache, recaller)
        self.dicomweb = edw.EdgeDicomweb(db, locator, ingestor)
        self.access = AccessLog(self.audit.record)
        self.spool = edw.spool_dir(cfg)
        self.probe = DiskProbe(cfg.edge.cache_dir)
        # the acceptors' slots file, read through a descriptor of our own (edge/slots.py)
        self.slots = AssocSlots(
            Path(cfg.edge.data_dir) / "associations.slots", cfg.edge.max_associations
        )
        self.registry = edge_registry(
            cfg.edge.index_path,
            cfg.edge.cache_dir,
            active,
            high_watermark=cfg.sync.cache_high_watermark,
            low_watermark=cfg.sync.cache_low_watermark,
        )
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edge-http", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        log.info("http listening address=%s:%d", self.cfg.edge.http_host, self.port)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop = None
        self.access.flush(time.time(), everything=True)
        self._ship_audit()
        self.slots.close()
        if self._own_audit:
            self.audit.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.cfg.edge.http_host, self.cfg.edge.http_port)
            loop.run_until_complete(site.start())
            self.port = int(runner.addresses[0][1])
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.run_until_complete(runner.cleanup())
            loop.close()
            return
        self._loop = loop
        housekeeping = loop.create_task(self._housekeeping())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(housekeeping)
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _housekeeping(self) -> None:
        """The cache-disk probe and audit shipping, on this thread's loop."""
        e = self.cfg.edge
        while True:
            try:
                if e.disk_probe_interval_s and self.probe.due(e.disk_probe_interval_s):
                    await asyncio.to_thread(self.probe.run)
                await asyncio.to_thread(self.access.flush, time.time())
                store = self._audit_store()
                if store is not None:
                    await asyncio.to_thread(self.audit.ship_due, store, e.audit_ship_interval_s)
            except Exception:
                log.exception("http housekeeping failed")
            await asyncio.sleep(HOUSEKEEPING_TICK_S)

    def _audit_store(self) -> ObjectStore | None:
        s = self.cfg.sync
        if not s.store_url:
            return None  # no object store: the audit log stays local
        return open_store(s.store_url, emulator_host=s.emulator_host)

    def _ship_audit(self) -> None:
        try:
            store = self._audit_store()
            if store is not None:
                self.audit.ship(store)
        except Exception:
            log.exception("shipping the audit log at stop failed")

    # ---- the app ------------------------------------------------------------------------
    def routes(self) -> list[tuple[str, str, Handler, Need]]:
        """Every /api route with the need it declares (deny by default: none means 403)."""
        a, st = self.admin, self.studies
        return [
            ("GET", "/api/session", self.api_session, Need.VIEW),
            ("GET", "/api/status", self.api_status, Need.OPERATE),
            ("GET", "/api/nodes", a.nodes, Need.OPERATE),
            ("POST", "/api/nodes", a.node_create, Need.ADMIN),
            ("POST", "/api/nodes-test", a.node_test, Need.ADMIN),
            ("PUT", "/api/nodes/{ae}", a.node_update, Need.ADMIN),
            ("DELETE", "/api/nodes/{ae}", a.node_delete, Need.ADMIN),
            ("POST", "/api/nodes/{ae}/echo", self.api_echo, Need.OPERATE),
            ("GET", "/api/studies", self.api_studies, Need.VIEW),
            ("POST", "/api/studies/{uid}/pin", self.api_pin, Need.OPERATE),
            ("POST", "/api/studies/{uid}/unpin", self.api_unpin, Need.OPERATE),
            ("POST", "/api/studies/{uid}/send", a.study_send, Need.OPERATE),
            ("GET", "/api/studies/{uid}/send", a.study_sends, Need.OPERATE),
            ("POST", "/api/studies/{uid}/delete", st.delete, Need.OPERATE),
            ("POST", "/api/studies/{uid}/undelete", st.undelete, Need.OPERATE),
            ("POST", "/api/studies/{uid}/hold", st.hold, Need.OPERATE),
            ("POST", "/api/studies/{uid}/release", st.release, Need.ADMIN),
            ("GET", "/api/studies/{uid}/attributes", self.corrections.attributes, Need.OPERATE),
            ("POST", "/api/studies/{uid}/modify", self.corrections.modify, Need.OPERATE),
            ("GET", "/api/routes", self.api_routes, Need.OPERATE),
            ("POST", "/api/routes/retry", self.api_routes_retry, Need.OPERATE),
            ("GET", "/api/routes/rules", a.rules, Need.OPERATE),
            ("POST", "/api/routes/rules", a.rule_save, Need.OPERATE),
            ("PUT", "/api/routes/rules/{name}", a.rule_save, Need.OPERATE),
            ("DELETE", "/api/routes/rules/{name}", a.rule_delete, Need.OPERATE),
            ("GET", "/api/events", self.api_events, Need.OPERATE),
            ("GET", "/api/commitments", self.api_commitments, Need.OPERATE),
            ("POST", "/api/commitments/retry", self.api_commitments_retry, Need.OPERATE),
            ("GET", "/api/users", a.users, Need.ADMIN),
            ("POST", "/api/users", a.user_create, Need.ADMIN),
            ("PUT", "/api/users/{name}", a.user_update, Need.ADMIN),
            ("DELETE", "/api/users/{name}", a.user_delete, Need.ADMIN),
            ("GET", "/api/audit", a.audit_recent, Need.ADMIN),
            *self.dicomweb_routes(),
        ]

    def dicomweb_routes(self) -> list[tuple[str, str, Handler, Need]]:
        """The shared DICOMweb routes: reads for every role, STOW for technicians and admins."""
        need = {dw.Access.READ: Need.VIEW, dw.Access.WRITE: Need.OPERATE}
        return [(m, dw.ROOT + p, fn, need[a]) for m, p, fn, a, _ in dw.ROUTES]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._guard])
        r = app.router
        needs: dict[Any, Need] = {}
        for method, path, handler, need in self.routes():
            needs[r.add_route(method, path, handler)] = need
        app[NEEDS] = needs
        dw.attach(app, edw.side(self.dicomweb, self.cfg, self.spool))
        webviewer.mount_viewer(app, self.cfg.edge.viewer_dir, self.authorized)
        r.add_get("/", self.index)
        r.add_get("/login", webviewer.login_page, allow_head=False)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_static("/static/", CONSOLE_DIR)
        r.add_get("/shared/{name}", shared_asset)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except PacsError as exc:
            resp = web.json_response(
                problem_json(exc), status=http_status(exc), content_type="application/problem+json"
            )
            if isinstance(exc, TooManyRequests):
                resp.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
            return resp

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Under /api/ and /dicomweb: authenticate, then the route's declared need (none:
        refused); DICOMweb requests are audited (edge/accesslog.py)."""
        path = request.path
        dicomweb = path == dw.ROOT or path.startswith(dw.ROOT + "/")
        if not (path.startswith("/api/") or dicomweb):
            return await handler(request)
        creds = Credentials.of(request)
        principal = await asyncio.to_thread(self.auth.authenticate, creds)
        request[PRINCIPAL] = principal
        if dicomweb:
            request[edw.NOTE] = {}
        status = 500
        try:
            need = request.app[NEEDS].get(request.match_info.route)
            if need is None:
                if request.match_info.http_exception is not None:
                    raise request.match_info.http_exception
                raise NotAuthorized("this route declares no access rule")  # fail closed
            principal.require(need)
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        except PacsError as exc:
            status = http_status(exc)
            raise
        finally:
            if dicomweb:
                edw.audit(self.access, request, principal, status)

    async def authorized(self, request: web.Request) -> bool:
        """Whether a request carries a usable credential (the viewer's page asks this)."""
        try:
            await asyncio.to_thread(self.auth.authenticate, Credentials.of(request))
        except Unauthenticated:
            return False
        return True

    # ---- open endpoints -----------------------------------------------------------------
    async def index(self, request: web.Request) -> web.FileResponse:
        resp = web.FileResponse(CONSOLE_DIR / "index.html")
        resp.headers.update(PAGE_HEADERS)
        return resp

    async def login(self, request: web.Request) -> web.Response:
        """Sign in: `{"user", "password"}` or `{"token"}` (JSON or a form); a session cookie
        on success. Same-origin only (a foreign page must not sign a browser in). A form post
        (the login page) is answered with a redirect to its `next` (this origin only)."""
        client = request.remote or ""
        if not Credentials.of(request).same_origin:
            raise Unauthenticated("sign in from this console's own page")
        form = request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")
        data: Any = await request.post() if form else await read_json(request)
        user, password = str(data.get("user", "")), str(data.get("password", ""))
        token = str(data.get("token", "")).strip()
        target = ws.safe_next(str(data.get("next", ""))) if form else ""
        try:
            principal, cookie = await asyncio.to_thread(
                self.auth.sign_in, user, password, token, client
            )
        except (Unauthenticated, TooManyRequests) as exc:
            name = TOKEN_ACTOR if token else user.strip()[:64]
            self.audit.record(
                action="login", actor=name, client=client, outcome="denied", detail=str(exc)
            )
            if form:
                query = urlencode({"error": str(exc), "next": target})
                raise web.HTTPSeeOther(f"/login?{query}") from exc
            raise
        resp: web.Response = web.json_response(
            {"name": principal.name, "role": principal.role, "needs": principal.needs}
        )
        if form:
            resp = web.HTTPSeeOther(target)
        secure = request.secure or self.auth.force_secure
        set_cookie(resp, cookie, int(self.auth.ttl_s), secure)
        self.audit.record(action="login", actor=principal.name, role=principal.role, client=client)
        log.info("login user=%s role=%s client=%s", principal.name, principal.role, client)
        if isinstance(resp, web.HTTPException):
            raise resp
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        if not Credentials.of(request).same_origin:
            raise Unauthenticated("sign out from this console's own page")
        resp = web.json_response({"signed_out": True})
        clear_cookie(resp, request.secure or self.auth.force_secure)
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready when the index takes a write lock and the object store answers a head."""
        e, sync = self.cfg.edge, self.cfg.sync
        checks: dict[str, health.Check] = {
            "index": (health.index_writable, (e.index_path, e.readyz_timeout_s))
        }
        if sync.store_url:
            checks["store"] = (
                _store_reachable,
                (sync.store_url, sync.emulator_host, e.readyz_timeout_s),
            )
        ok, body = await health.readiness(checks, e.readyz_timeout_s)
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(render, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    # ---- JSON API -----------------------------------------------------------------------
    async def api_session(self, request: web.Request) -> web.Response:
        p: Principal = request[PRINCIPAL]
        return web.json_response({"name": p.name, "role": p.role, "kind": p.kind, "needs": p.needs})

    async def api_status(self, request: web.Request) -> web.Response:
        e, s = self.cfg.edge, self.cfg.sync
        body = await asyncio.to_thread(
            dashboard.status,
            self.db,
            str(e.cache_dir),
            s.cache_high_watermark,
            s.cache_low_watermark,
            self.active(),
            self.slots.per_node(),
        )
        body["ae_title"] = e.ae_title
        body["disk_probe"] = self.probe.summary() | {"interval_s": e.disk_probe_interval_s}
        return web.json_response(body)

    async def api_echo(self, request: web.Request) -> web.Response:
        ae = request.match_info["ae"]
        node = await asyncio.to_thread(lambda: get_node(self.db.reader(), ae))
        if node is None:
            raise NotFound(f"no node {ae!r}")
        return web.json_response(await self.admin.echo_node(node))

    async def api_studies(self, request: web.Request) -> web.Response:
        limit = _int_param(request, "limit", 50, 1, 1000)
        return web.json_response(await asyncio.to_thread(dashboard.studies, self.db, limit))

    async def api_pin(self, request: web.Request) -> web.Response:
        return await self._pin(request, True)

    async def api_unpin(self, request: web.Request) -> web.Response:
        return await self._pin(request, False)

    async def _pin(self, request: web.Request, pinned: bool) -> web.Response:
        uid = request.match_info["uid"]
        if not is_valid_uid(uid):
            raise BadRequest(f"not a valid UID: {uid[:70]!r}")
        await asyncio.to_thread(dashboard.set_pinned, self.db, uid, pinned)
        log.info("console %s study_uid=%s", "pin" if pinned else "unpin", uid)
        return web.json_response({"study_uid": uid, "pinned": pinned})

    async def api_routes(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(dashboard.route_queue, self.db))

    async def api_routes_retry(self, request: web.Request) -> web.Response:
        """Requeue dead jobs: all of them, or `?id=N` (repeatable)."""
        try:
            ids = [int(v) for v in request.query.getall("id", [])]
        except ValueError as exc:
            raise BadRequest("id must be an integer") from exc
        n = await asyncio.to_thread(dashboard.retry_routes, self.db, ids or None)
        log.info("console route retry jobs=%d", n)
        return web.json_response({"requeued": n})

    async def api_events(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind", "association_rejected")
        limit = _int_param(request, "limit", 100, 1, 1000)
        return web.json_response(await asyncio.to_thread(dashboard.events, self.db, kind, limit))

    async def api_commitments(self, request: web.Request) -> web.Response:
        """Storage Commitment reports not yet delivered (pending with backoff, or failed)."""
        limit = _int_param(request, "limit", 100, 1, 1000)
        return web.json_response(await asyncio.to_thread(commitqueue.listing, self.db, limit))

    async def api_commitments_retry(self, request: web.Request) -> web.Response:
        queue = commitqueue.ReportQueue(self.db)
        n = await asyncio.to_thread(queue.retry_failed)
        log.info("console commitment retry reports=%d", n)
        return web.json_response({"requeued": n})


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an integer") from exc
    return max(lo, min(hi, value))


def _store_reachable(url: str, emulator_host: str, timeout_s: float) -> None:
    health.store_reachable(open_store(url, emulator_host=emulator_host, timeout_s=timeout_s))
