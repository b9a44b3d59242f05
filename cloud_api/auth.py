"""Bearer tokens, roles and per-site scope. Deny by default.

Tokens are shown once at creation and stored only as SHA-256 hashes (they are 256-bit random
strings, so a slow password hash buys nothing). The tokens file is re-read when it changes, so
`hpacs-cloud token create|revoke` takes effect on a running server without a restart.

Roles:
- `admin`: every site, every route, restores and tokens.
- `reader`: QIDO/WADO on its sites only (a teleradiologist).
- `agent`: a machine, least privilege: STOW-RS (into site `cloud`, which must be in its scope)
  and reading its sites' restore jobs; no patient data is read with it. Readers never write.
- `share`: not a token but a share link's session (cloud_api/shares.py): READ of one study
  (`Principal.study`) within the sites of the admin or reader who created the link.

A route declares what it needs (`Need`); a route without a declaration is refused (403) even
with an admin token, so a forgotten declaration fails closed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from shared.errors import BadRequest, NotAuthorized, NotFound, Unauthenticated
from shared.fsutil import write_atomic

ROLES = ("admin", "reader", "agent")
TOKEN_PREFIX = "hpacs_"


class Need(StrEnum):
    """What a route requires of the caller."""

    READ = "read"  # patient data of the sites in scope
    WRITE = "write"  # STOW-RS into site `cloud`
    RESTORE_READ = "restore_read"  # a site's restore jobs
    SHARE = "share"  # create, list and revoke share links (a reader: its own)
    ADMIN = "admin"


ALLOWED: dict[str, frozenset[Need]] = {
    "admin": frozenset(Need),
    "reader": frozenset({Need.READ, Need.SHARE}),
    "agent": frozenset({Need.WRITE, Need.RESTORE_READ}),
    "share": frozenset({Need.READ}),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name, role and site scope (`*` in sites: all).

    `study` (a share link) narrows READ to one Study Instance UID: the request must name it
    (`study_filter`); cloud_api/shares.py enforces it on every DICOMweb route."""

    name: str
    role: str
    sites: tuple[str, ...]
    study: str = ""

    @property
    def all_sites(self) -> bool:
        return self.role == "admin" or "*" in self.sites

    def site_filter(self) -> list[str] | None:
        """Sites to restrict queries to; None means every site."""
        return None if self.all_sites else list(self.sites)

    def study_filter(self) -> str | None:
        """The one study this principal may read; None means no study restriction."""
        return self.study or None

    def may(self, need: Need, site: str | None = None) -> bool:
        if need not in ALLOWED.get(self.role, frozenset()):
            return False
        return site is None or self.all_sites or site in self.sites

    def require(self, need: Need, site: str | None = None) -> None:
        if not self.may(need, site):
            what = f"{need.value} on site {site}" if site else need.value
            raise NotAuthorized(f"token {self.name!r} ({self.role}) may not {what}")


@dataclass
class TokenRecord:
    name: str
    role: str
    sites: list[str]
    sha256: str
    created_at: float
    revoked_at: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The tokens file (JSON), cached in memory and reloaded when its mtime changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._records: list[TokenRecord] = []
        self._by_hash: dict[str, TokenRecord] = {}

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._records, self._by_hash, self._mtime = [], {}, None
            return
        if mtime == self._mtime:
            return
        data = json.loads(self.path.read_text() or "[]")
        self._records = [TokenRecord(**d) for d in data]
        self._by_hash = {r.sha256: r for r in self._records if r.revoked_at is None}
        self._mtime = mtime

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps([asdict(r) for r in self._records], indent=1).encode()
        write_atomic(self.path, data)  # mkstemp: the file is 0600
        self._mtime = None

    def authenticate(self, header: str | None) -> Principal:
        """The principal for an `Authorization: Bearer ...` header, or Unauthenticated. The
        scheme name is case-insensitive (RFC 9110 section 11.1), as the edge has it."""
        scheme, _, token = (header or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("a bearer token is required")
        with self._lock:
            self._load()
            rec = self._by_hash.get(hash_token(token))
        if rec is None:
            raise Unauthenticated("unknown or revoked token")
        return Principal(rec.name, rec.role, tuple(rec.sites))

    def principal_for_hash(self, sha256: str) -> Principal | None:
        """The principal of an active token known by its hash (a session names its token so)."""
        with self._lock:
            self._load()
            rec = self._by_hash.get(sha256)
        return None if rec is None else Principal(rec.name, rec.role, tuple(rec.sites))

    def create(self, name: str, role: str, sites: list[str]) -> str:
        """A new token; the only time its clear text exists outside the caller."""
        if role not in ROLES:
            raise BadRequest(f"role must be one of {', '.join(ROLES)}")
        if not name or len(name) > 64:
            raise BadRequest("token name must be 1-64 characters")
        with self._lock:
            self._load()
            if any(r.name == name and r.revoked_at is None for r in self._records):
                raise BadRequest(f"an active token named {name!r} exists; revoke it first")
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            rec = TokenRecord(name, role, sorted(set(sites)), hash_token(token), time.time())
            self._records.append(rec)
            self._save()
        return token

    def revoke(self, name: str) -> None:
        with self._lock:
            self._load()
            hits = [r for r in self._records if r.name == name and r.revoked_at is None]
            if not hits:
                raise NotFound(f"no active token named {name!r}")
            for r in hits:
                r.revoked_at = time.time()
            self._save()

    def list(self) -> list[TokenRecord]:
        with self._lock:
            self._load()
            return list(self._records)
