"""Who is calling the edge's HTTP API, and what each role may do.

Two kinds of credentials:
- the **console token** (`Authorization: Bearer ...`), for machines and scripts: full admin;
- a **session cookie** from signing in as a local user (edge/users.py) on the console's
  login form, or with the console token in that form. The cookie machinery (signed expiring
  claims, HttpOnly, SameSite=Strict, Secure under TLS, the same-origin rule for
  state-changing requests) is `shared/web/session.py`, shared with the cloud API.

A user's cookie names the user and the row's `epoch`; both are checked on every request, so
removing a user, changing their password or role ends their sessions at once. A token cookie
names the token's SHA-256: replacing the token file ends those sessions.

Every `/api` route declares a `Need` in the route table (edge/http.py); a route without one
is refused even to an admin (deny by default, as on the cloud API).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from edge.users import get_user, verify_password
from shared.config import EdgeConfig
from shared.errors import NotAuthorized, TooManyRequests, Unauthenticated
from shared.index import Database
from shared.web import session as ws
from shared.web.throttle import LoginThrottle

log = logging.getLogger("hpacs.edge.auth")

TOKEN_ACTOR = "console-token"


class Need(StrEnum):
    VIEW = "view"  # the study browser and the viewer
    OPERATE = "operate"  # dashboard, studies, routing (queue and rules), node tests
    ADMIN = "admin"  # nodes and users, the audit trail


ALLOWED: dict[str, frozenset[Need]] = {
    "admin": frozenset(Need),
    "technician": frozenset({Need.VIEW, Need.OPERATE}),
    "viewer": frozenset({Need.VIEW}),
}


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    kind: str  # "token" or "user"

    def may(self, need: Need) -> bool:
        return need in ALLOWED.get(self.role, frozenset())

    def require(self, need: Need) -> None:
        if not self.may(need):
            raise NotAuthorized(f"{self.name!r} ({self.role}) may not {need.value}")

    @property
    def needs(self) -> list[str]:
        return sorted(n.value for n in ALLOWED.get(self.role, frozenset()))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class WebAuth:
    """Authentication of requests and sign-in for one edge HTTP side."""

    def __init__(self, cfg: EdgeConfig, db: Database, token: str) -> None:
        self.db = db
        self.token = token
        key_file = cfg.session_key_file or str(Path(cfg.data_dir) / "session.key")
        self.signer = ws.SessionSigner(ws.load_or_create_key(key_file))
        self.ttl_s = cfg.session_ttl_s
        self.force_secure = cfg.session_cookie_secure
        self.throttle = LoginThrottle(
            max_per_user=cfg.login_max_failures_per_user,
            max_per_client=cfg.login_max_failures_per_client,
            window_s=cfg.login_window_s,
        )

    def _token_ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def authenticate(self, c: ws.Credentials) -> Principal:
        """Bearer console token, else the session cookie (same-origin for state changes)."""
        if c.authorization is not None:
            scheme, _, given = c.authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not self._token_ok(given.strip()):
                raise Unauthenticated("a valid console token is required")
            return Principal(TOKEN_ACTOR, "admin", "token")
        if not c.cookie:
            raise Unauthenticated("sign in, or send the console token")
        principal = self._principal(self.signer.claims_of(c))
        if principal is None:
            raise Unauthenticated("the session's user or token is no longer valid")
        return principal

    def _principal(self, claims: dict[str, object]) -> Principal | None:
        kind, sub = claims.get("kind"), str(claims.get("sub", ""))
        if kind == "token":
            ok = hmac.compare_digest(sub, _digest(self.token))
            return Principal(TOKEN_ACTOR, "admin", "token") if ok else None
        if kind == "user":
            user = get_user(self.db.reader(), sub)
            if user is None or user.epoch != claims.get("ep"):
                return None
            return Principal(user.name, user.role, "user")
        return None

    def sign_in(self, user: str, password: str, token: str, client: str) -> tuple[Principal, str]:
        """Check a sign-in (user + password, or the console token); returns the principal and
        the cookie value. Raises TooManyRequests beyond the failure limits, Unauthenticated
        otherwise; each failure is logged at WARNING (the name, never the password)."""
        name = user.strip()[:64] if not token else TOKEN_ACTOR
        now = time.time()
        wait = self.throttle.wait_s(name, client, now)
        if wait > 0:
            log.warning("login refused user=%s client=%s reason=rate-limited", name, client)
            raise TooManyRequests(
                "too many failed sign-ins: wait and try again", retry_after_s=wait
            )
        claims: dict[str, Any]
        if token:
            if self._token_ok(token.strip()):
                claims = {"kind": "token", "sub": _digest(self.token)}
                who = Principal(TOKEN_ACTOR, "admin", "token")
                return who, self.signer.sign(claims, self.ttl_s)
        else:
            found = verify_password(self.db.reader(), name, password) if name else None
            if found is not None:
                self.throttle.succeeded(name)
                claims = {"kind": "user", "sub": found.name, "ep": found.epoch}
                who = Principal(found.name, found.role, "user")
                return who, self.signer.sign(claims, self.ttl_s)
        self.throttle.failed(name, client, now)
        log.warning("login failed user=%s client=%s", name, client)
        raise Unauthenticated("wrong user name or password" if not token else "wrong token")
