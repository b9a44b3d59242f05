"""The edge's HTTP side: console, JSON API, /metrics and health, on its own thread and loop.

The DIMSE path stays synchronous (docs/ARCHITECTURE.md); aiohttp runs here in a dedicated
thread with its own event loop, so a slow browser never touches an association thread.

Access: `/api/*` is denied unless the request carries the console token
(`Authorization: Bearer <token>`). `/metrics`, `/healthz` and `/readyz` are open by design:
Prometheus and the service manager probe them without credentials, they carry no patient data,
and the listener binds to loopback (`edge.http_host = 127.0.0.1`) unless an admin widens it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

import shared
from edge import commitqueue, dashboard
from edge.scu import echo, node_ssl_context
from shared import health
from shared.config import Config
from shared.errors import (
    BadRequest,
    NotFound,
    PacsError,
    Unauthenticated,
    http_status,
    problem_json,
)
from shared.index import Database
from shared.metrics import CONTENT_TYPE, edge_registry, render
from shared.registry import get_node
from shared.store import open_store
from shared.uids import is_valid_uid

log = logging.getLogger("hpacs.edge.http")

CONSOLE_DIR = Path(__file__).parent / "console"
SHARED_WEB_DIR = Path(shared.__file__).parent / "web"


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


def start_http(cfg: Config, db: Database, active: Callable[[], int]) -> EdgeHttp | None:
    """Start the HTTP side for `hpacs-edge serve`; None when edge.http_port is 0.

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
    http = EdgeHttp(cfg, db, active, token=token)
    http.start()
    return http


class EdgeHttp:
    """aiohttp app on `edge.http_host:edge.http_port`, run in a thread with its own loop."""

    def __init__(
        self, cfg: Config, db: Database, active: Callable[[], int], token: str | None = None
    ) -> None:
        self.cfg = cfg
        self.db = db
        self.active = active
        self.token = token if token is not None else ensure_token(cfg)[0]
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
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    # ---- the app ------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth])
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/api/status", self.api_status)
        r.add_get("/api/nodes", self.api_nodes)
        r.add_post("/api/nodes/{ae}/echo", self.api_echo)
        r.add_get("/api/studies", self.api_studies)
        r.add_post("/api/studies/{uid}/pin", self.api_pin)
        r.add_post("/api/studies/{uid}/unpin", self.api_unpin)
        r.add_get("/api/routes", self.api_routes)
        r.add_post("/api/routes/retry", self.api_routes_retry)
        r.add_get("/api/events", self.api_events)
        r.add_get("/api/commitments", self.api_commitments)
        r.add_post("/api/commitments/retry", self.api_commitments_retry)
        r.add_static("/static/", CONSOLE_DIR)
        r.add_static("/shared/", SHARED_WEB_DIR)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]
    ) -> web.StreamResponse:
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except PacsError as exc:
            return web.json_response(
                problem_json(exc), status=http_status(exc), content_type="application/problem+json"
            )

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]
    ) -> web.StreamResponse:
        """Deny by default under /api/: only a request with the console token passes."""
        if request.path.startswith("/api/"):
            header = request.headers.get("Authorization", "")
            given = header[7:].strip() if header.lower().startswith("bearer ") else ""
            if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
                raise Unauthenticated("a valid console token is required")
        resp: web.StreamResponse = await handler(request)
        return resp

    # ---- open endpoints -----------------------------------------------------------------
    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(CONSOLE_DIR / "index.html")

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
    async def api_status(self, request: web.Request) -> web.Response:
        e, s = self.cfg.edge, self.cfg.sync
        body = await asyncio.to_thread(
            dashboard.status,
            self.db,
            str(e.cache_dir),
            s.cache_high_watermark,
            s.cache_low_watermark,
            self.active(),
        )
        body["ae_title"] = e.ae_title
        return web.json_response(body)

    async def api_nodes(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(dashboard.nodes, self.db))

    async def api_echo(self, request: web.Request) -> web.Response:
        ae = request.match_info["ae"]
        node = await asyncio.to_thread(lambda: get_node(self.db.reader(), ae))
        if node is None:
            raise NotFound(f"no node {ae!r}")
        ctx = node_ssl_context(self.cfg.edge.tls, node)
        res = await asyncio.to_thread(
            echo, self.cfg.edge.ae_title, node, ssl_context=ctx, timeout_s=10.0
        )
        log.info(
            "console echo ae_title=%s ok=%s status=%s rtt_ms=%.1f",
            ae,
            res.ok,
            res.status,
            res.rtt_ms,
        )
        return web.json_response(
            {
                "ae_title": ae,
                "ok": res.ok,
                "status": f"0x{res.status:04X}" if res.status is not None else None,
                "rtt_ms": round(res.rtt_ms, 1),
                "detail": res.detail,
            }
        )

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
