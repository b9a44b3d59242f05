"""Browser sessions, side-independent: signed expiring cookies, the CSRF rule, the login page.

A session is a cookie whose value is `<claims>.<signature>`: base64url JSON claims (`sub` what
it stands for, `kind`, `iat`, `exp`) and an HMAC-SHA256 over them with a server key. Nothing is
stored server-side, so any replica holding the same key accepts it: behind a load balancer the
replicas share the key file (a mounted secret), not a session table. What the claims name (a
token's hash, a share link's id) is looked up again on every request by the side, so revoking
the token or the link ends its sessions at once; the signature and `exp` bound the rest.

The cookie is `HttpOnly` (scripts cannot read it), `SameSite=Strict` (a cross-site page cannot
make the browser send it), `Path=/`, and `Secure` under TLS. SameSite is the first CSRF
defence; the second is `same_origin`: a state-changing request authenticated by the cookie must
come from this origin (`Sec-Fetch-Site: same-origin`, or when a browser does not send that, an
`Origin` equal to the request's own). A bearer token is never sent by a browser on its own, so
requests with `Authorization` need no such check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from shared.errors import Unauthenticated

COOKIE = "hpacs_session"
KEY_BYTES = 32
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_HTML = Path(__file__).parent / "login.html"


def load_or_create_key(path: str | Path) -> bytes:
    """The signing key (hex in a 0600 file); created on first use when absent."""
    p = Path(path)
    try:
        text = p.read_text().strip()
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        try:  # create-only: two processes starting together must end with one key
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_key(p)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.hex() + "\n")
        return key
    try:
        key = bytes.fromhex(text)
    except ValueError:
        hint = "make one: openssl rand -hex 32"
        raise ValueError(f"session key in {p} is not hex ({hint})") from None
    if len(key) < 16:
        raise ValueError(f"session key in {p} is shorter than 128 bits")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Signs and verifies session claims with one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def sign(self, claims: dict[str, Any], ttl_s: float, now: float | None = None) -> str:
        now = time.time() if now is None else now
        full = {**claims, "iat": int(now), "exp": int(now + ttl_s)}
        body = _b64(json.dumps(full, sort_keys=True, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def verify(self, value: str, now: float | None = None) -> dict[str, Any] | None:
        """The claims of a genuine, unexpired cookie value; None otherwise."""
        body, _, mac = value.partition(".")
        if not body or not mac or not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            claims = json.loads(_unb64(body))
        except ValueError:
            return None
        now = time.time() if now is None else now
        if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int):
            return None
        return claims if claims["exp"] > now else None

    def claims_of(self, c: Credentials) -> dict[str, Any]:
        """The claims of a request's session cookie, under the CSRF rule (`same_origin`: the
        cookie does not authorise a cross-origin state change); Unauthenticated otherwise. The
        side then looks up what they name (a token, a user, a share link) on every request."""
        claims = self.verify(c.cookie or "")
        if claims is None:
            raise Unauthenticated("the session expired or is not valid: sign in again")
        if not c.same_origin:
            raise Unauthenticated("a session cookie does not authorise a cross-origin request")
        return claims


@dataclass(frozen=True)
class Credentials:
    """What a request presents, copied off the request so it can be checked in a thread."""

    authorization: str | None
    cookie: str | None
    method: str
    origin: str | None
    fetch_site: str | None
    host: str

    @classmethod
    def of(cls, request: web.Request) -> Credentials:
        h = request.headers
        return cls(
            authorization=h.get("Authorization"),
            cookie=request.cookies.get(COOKIE),
            method=request.method,
            origin=h.get("Origin"),
            fetch_site=h.get("Sec-Fetch-Site"),
            host=request.host,
        )

    @property
    def same_origin(self) -> bool:
        return same_origin(self.method, self.origin, self.fetch_site, self.host)


def same_origin(method: str, origin: str | None, fetch_site: str | None, host: str) -> bool:
    """The CSRF rule for a cookie-authenticated request: safe methods pass; anything else must
    say it comes from this origin. `Sec-Fetch-Site` (set by the browser, not by page scripts)
    decides when present; otherwise `Origin` must name this host. Neither: refused."""
    if method in SAFE_METHODS:
        return True
    if fetch_site is not None:
        return fetch_site == "same-origin"
    if not origin or origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def set_cookie(resp: web.StreamResponse, value: str, max_age_s: int, secure: bool) -> None:
    resp.set_cookie(
        COOKIE,
        value,
        max_age=max(0, max_age_s),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )


def clear_cookie(resp: web.StreamResponse, secure: bool) -> None:
    resp.del_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="Strict")


def safe_next(target: str | None, default: str = "/viewer/") -> str:
    """Where to go after login: a path on this origin only (never `//host` or a URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


ACCOUNT_FIELDS = """
      <label for="user">User name</label>
      <input id="user" name="user" autocomplete="username">
      <label for="password">Password</label>
      <input id="password" name="password" type="password" autocomplete="current-password">"""


def login_page(assets_prefix: str, *, accounts: bool = False, hint: str = "") -> bytes:
    """The login form (static, no data); its style and script come from `assets_prefix`.
    `accounts`: a user name and password too (the edge's local users), the token then being
    the alternative; `hint` (HTML) replaces the text saying which token to use."""
    text = LOGIN_HTML.read_text(encoding="utf-8").replace("/__assets__/", assets_prefix)
    if accounts:
        text = text.replace("<!--accounts-->", ACCOUNT_FIELDS, 1)
        text = text.replace('autocomplete="current-password" required>', 'autocomplete="off">', 1)
    if hint:
        start, end = text.index("<!--hint-->"), text.index("<!--/hint-->")
        text = text[:start] + hint + text[end:]
    return text.encode()


LOGIN_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
