"""Who a request is, for the cloud API: a bearer token, or a browser session cookie.

The guard calls `Sessions.authenticate` for every request that is not public. A session is a
signed, expiring cookie (shared/web/session.py) naming either a token by its hash (login with
an admin or reader token) or a share link by its id; both are looked up again on every
request, so revoking the token or the link ends the session. Stateless replicas share the
signing key file (`cloud.session_key_file`), never a session table.

Public routes here (no data; each audits what it does): the login page and its form post,
sign-out, and the share link itself. `/api/session` (who am I; POST turns a bearer token into
a cookie for the console's "open the viewer") goes through the guard like any API route.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from cloud_api import shares as sh
from cloud_api.auth import Principal, TokenStore, hash_token
from cloud_api.handlers import PRINCIPAL
from shared.config import CloudConfig
from shared.errors import Gone, Unauthenticated, http_status, problem_json
from shared.web import session as ws

if TYPE_CHECKING:
    from cloud_api.app import Services

LOGIN_PATH = "/login"
ASSETS_PREFIX = "/console/shared/"  # where the cloud serves shared/web's style and scripts
BROWSER_ROLES = frozenset({"admin", "reader"})  # agents are machines: no browser session


class Sessions:
    """Authentication of requests and issuing of session cookies for one replica."""

    def __init__(self, cfg: CloudConfig, tokens: TokenStore, shares: sh.ShareStore) -> None:
        key_file = cfg.session_key_file or str(Path(cfg.data_dir) / "session.key")
        self.signer = ws.SessionSigner(ws.load_or_create_key(key_file))
        self.ttl_s = cfg.session_ttl_s
        self.force_secure = cfg.session_cookie_secure
        self.tokens = tokens
        self.shares = shares

    def authenticate(self, c: ws.Credentials) -> Principal:
        """Bearer token if one is presented, else the session cookie; Unauthenticated if
        neither is valid, or if a cookie-authenticated request is state-changing and not from
        this origin (CSRF: the cookie does not count for it)."""
        if c.authorization is not None:
            return self.tokens.authenticate(c.authorization)
        if not c.cookie:
            raise Unauthenticated("a bearer token or a session is required")
        principal = self.principal(self.signer.claims_of(c))
        if principal is None:
            raise Unauthenticated("the session's token or share link is no longer valid")
        return principal

    def principal(self, claims: dict[str, Any]) -> Principal | None:
        kind, sub = claims.get("kind"), str(claims.get("sub", ""))
        if kind == "token":
            return self.tokens.principal_for_hash(sub)
        if kind == "share":
            rec = self.shares.get(sub)
            return rec.principal() if rec is not None and rec.state() == "active" else None
        return None

    async def authorized(self, request: web.Request) -> bool:
        """Whether the request carries a usable credential (the viewer page asks this)."""
        try:
            await asyncio.to_thread(self.authenticate, ws.Credentials.of(request))
        except Unauthenticated:
            return False
        return True

    def secure(self, request: web.Request) -> bool:
        return request.secure or self.force_secure

    def start(
        self,
        resp: web.StreamResponse,
        request: web.Request,
        kind: str,
        sub: str,
        until: float | None = None,
    ) -> float:
        """Set a session cookie on `resp` (ending at `until` if that is sooner than the
        configured lifetime); returns when it expires."""
        ttl = self.ttl_s if until is None else max(1.0, min(self.ttl_s, until - time.time()))
        value = self.signer.sign({"kind": kind, "sub": sub}, ttl)
        ws.set_cookie(resp, value, int(ttl), self.secure(request))
        return time.time() + ttl


def _svc(request: web.Request) -> Services:
    from cloud_api.app import SERVICES

    return request.app[SERVICES]


def _audit(request: web.Request, **kw: Any) -> None:
    _svc(request).audit.record(client=request.remote or "", **kw)


def _problem(err: Exception) -> web.Response:
    return web.json_response(
        problem_json(err), status=http_status(err), content_type="application/problem+json"
    )


# ---- public: login page, login form, sign-out ---------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    return web.Response(
        body=ws.login_page(ASSETS_PREFIX), content_type="text/html", headers=ws.LOGIN_HEADERS
    )


async def login(request: web.Request) -> web.Response:
    """The form post: a valid admin or reader token becomes a session cookie."""
    sessions = _svc(request).sessions
    form = await request.post()
    target = ws.safe_next(str(form.get("next", "")))
    creds = ws.Credentials.of(request)
    if not creds.same_origin:  # login CSRF: a foreign page must not sign us in as someone
        _audit(request, action="login", outcome="denied", status=403, detail="cross-origin")
        return _problem(Unauthenticated("sign in from this site's login page"))
    token = str(form.get("token", "")).strip()
    try:
        p = await asyncio.to_thread(sessions.tokens.authenticate, f"Bearer {token}")
        if p.role not in BROWSER_ROLES:
            raise Unauthenticated(f"a {p.role} token cannot sign in to the viewer")
    except Unauthenticated as exc:
        _audit(request, action="login", outcome="denied", status=401, detail=str(exc))
        query = urlencode({"error": str(exc), "next": target})
        raise web.HTTPSeeOther(f"{LOGIN_PATH}?{query}") from exc
    resp = web.HTTPSeeOther(target)
    sessions.start(resp, request, "token", hash_token(token))
    _audit(request, action="login", outcome="ok", token=p.name, role=p.role, status=303)
    raise resp


async def logout(request: web.Request) -> web.Response:
    """Forget the cookie in this browser (the signed value stays valid until it expires unless
    its token or link is revoked: sign-out is not a revocation)."""
    if not ws.Credentials.of(request).same_origin:
        return _problem(Unauthenticated("sign out from this site"))
    resp = web.HTTPSeeOther(LOGIN_PATH)
    ws.clear_cookie(resp, _svc(request).sessions.secure(request))
    _audit(request, action="logout", outcome="ok", status=303)
    raise resp


# ---- guarded: who am I, bearer -> cookie ------------------------------------------------------


def _whoami(p: Principal, how: str) -> dict[str, Any]:
    return {
        "name": p.name,
        "role": p.role,
        "sites": list(p.sites),
        "study": p.study or None,
        "authenticated_by": how,
    }


async def api_session(request: web.Request) -> web.Response:
    how = "bearer" if "Authorization" in request.headers else "session"
    return web.json_response(_whoami(request[PRINCIPAL], how))


async def api_session_create(request: web.Request) -> web.Response:
    """With a bearer token: also set a session cookie for it (the console does this before it
    opens the viewer, which a browser navigates to without headers)."""
    p: Principal = request[PRINCIPAL]
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or p.role not in BROWSER_ROLES:
        return web.json_response(_whoami(p, "session"))
    sessions = _svc(request).sessions
    resp = web.json_response(_whoami(p, "bearer"), status=201)
    token = header[len("Bearer ") :].strip()
    sessions.start(resp, request, "token", hash_token(token))
    return resp


# ---- public: the share link ---------------------------------------------------------------------

GONE_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>hpacs: link no longer valid</title></head><body><h1>This link is no longer valid</h1>
<p>It expired or was revoked. Ask the person who sent it for a new one.</p></body></html>
"""


async def share_open(request: web.Request) -> web.StreamResponse:
    """Open a share link: audit it, then a session for its one study and on to the viewer."""
    svc = _svc(request)
    token = request.match_info["token"]
    share_id = token.partition(".")[0][:40]
    rec = await asyncio.to_thread(svc.shares.lookup, token)
    who = {"action": "share-open", "token": f"share:{share_id}", "role": "share"}
    if rec is None:
        _audit(request, outcome="denied", status=404, detail="unknown share link", **who)
        raise web.HTTPNotFound(text="no such share link")
    state = rec.state()
    if state != "active":
        _audit(request, outcome="denied", status=410, study_uid=rec.study_uid, detail=state, **who)
        if "text/html" in request.headers.get("Accept", ""):
            return web.Response(status=410, text=GONE_HTML, content_type="text/html")
        return _problem(Gone(f"this share link was {state}"))
    resp = sh.interstitial(rec.study_uid)
    expires = svc.sessions.start(resp, request, "share", rec.id, rec.expires_at)
    detail = f"opened; session until {int(expires)}"
    _audit(request, outcome="ok", status=200, study_uid=rec.study_uid, detail=detail, **who)
    return resp


def mount_public(app: web.Application) -> frozenset[Any]:
    """The public routes of sessions and share links; returns their resources."""
    r = app.router
    login_res = r.add_get(LOGIN_PATH, login_page, allow_head=False).resource
    r.add_post(LOGIN_PATH, login)
    out = r.add_post("/logout", logout).resource
    share = r.add_get("/share/{token}", share_open, allow_head=False).resource
    assert login_res is not None and out is not None and share is not None
    return frozenset({login_res, out, share})
