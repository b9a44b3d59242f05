"""Share links: one study, for someone without an account, time-limited, revocable, audited.

A link is `/share/<id>.<secret>`. The id names the record, the secret (256 random bits) is
stored only as its SHA-256, like API tokens. Records live in the bucket, one object per link
at `shares/<id>.json`, because every replica must see a link created or revoked on another
and the tokens file cannot hold them (it is a read-only secret in a cluster and only the CLI
writes it). Opening a link reads its record fresh; a session opened from a link re-reads it
at most every `RECHECK_S`, so a revocation reaches every replica within that time (at once on
the replica that revoked it).

Opening a valid link sets a session cookie for a `share` principal (auth.py: READ only, of the
link's one study, within the creator's sites) and sends the browser to the viewer on that
study. `scope` enforces the study on every DICOMweb route: a path naming another study is 404,
a search not pinned to this study's UID answers 204 (nothing), so the viewer shows no other
study and learns nothing of one. Every opening (valid, expired, revoked, unknown) is an audit
event, and every DICOMweb request of the session is audited like any other, under
`share:<id>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from cloud_api import qido
from cloud_api.auth import Principal
from cloud_api.handlers import AUDIT, PRINCIPAL
from shared.errors import BadRequest, NotFound
from shared.keys import SHARES_PREFIX, share_key
from shared.store.base import ObjectStore
from shared.uids import is_valid_uid

if TYPE_CHECKING:
    from cloud_api.app import Services

RECHECK_S = 5.0
MAX_HOURS = 24 * 90
STUDY_KEYS = frozenset({"STUDYINSTANCEUID", "0020000D"})


@dataclass
class Share:
    id: str
    study_uid: str
    sites: list[str]  # the creator's scope when the link was made
    created_by: str
    created_at: float
    expires_at: float
    secret_sha256: str
    revoked_at: float | None = None
    revoked_by: str = ""

    def state(self, now: float | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if (time.time() if now is None else now) >= self.expires_at else "active"

    def public(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "secret_sha256"}
        out["state"] = self.state()
        return out

    def principal(self) -> Principal:
        return Principal(f"share:{self.id}", "share", tuple(self.sites), self.study_uid)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_share_id(now: float | None = None) -> str:
    """Sortable by creation time (listing the prefix lists links in order), random tail."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:012x}{secrets.token_hex(5)}"


class ShareStore:
    """Share records in the bucket, with a short per-replica cache for sessions."""

    def __init__(self, store: ObjectStore, recheck_s: float = RECHECK_S) -> None:
        self.store = store
        self.recheck_s = recheck_s
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Share | None]] = {}

    def _read(self, share_id: str) -> Share | None:
        try:
            with self.store.open(share_key(share_id)) as fh:
                rec = Share(**json.loads(fh.read()))
        except NotFound:
            rec = None
        with self._lock:
            self._cache[share_id] = (time.monotonic(), rec)
        return rec

    def _write(self, rec: Share, create: bool) -> None:
        data = json.dumps(asdict(rec), indent=1, sort_keys=True).encode()
        self.store.put(share_key(rec.id), data, content_type="application/json", if_absent=create)
        with self._lock:
            self._cache[rec.id] = (time.monotonic(), rec)

    def create(
        self, study_uid: str, sites: Iterable[str], created_by: str, hours: float
    ) -> tuple[Share, str]:
        """A new link; returns it and its token `<id>.<secret>` (shown once, never stored)."""
        if not is_valid_uid(study_uid):
            raise BadRequest(f"not a valid Study Instance UID: {study_uid[:80]!r}")
        if not 0 < hours <= MAX_HOURS:
            raise BadRequest(f"hours must be more than 0 and at most {MAX_HOURS}")
        now = time.time()
        secret = secrets.token_urlsafe(32)
        rec = Share(
            id=new_share_id(now),
            study_uid=study_uid,
            sites=sorted(set(sites)),
            created_by=created_by,
            created_at=now,
            expires_at=now + hours * 3600,
            secret_sha256=_hash(secret),
        )
        self._write(rec, create=True)
        return rec, f"{rec.id}.{secret}"

    def get(self, share_id: str, fresh: bool = False) -> Share | None:
        try:
            share_key(share_id)
        except BadRequest:
            return None
        if not fresh:
            with self._lock:
                hit = self._cache.get(share_id)
            if hit is not None and time.monotonic() - hit[0] < self.recheck_s:
                return hit[1]
        return self._read(share_id)

    def lookup(self, token: str) -> Share | None:
        """The share a link token names, read fresh, whatever its state; None when there is
        no such link or the secret is wrong (the two are not told apart)."""
        share_id, _, secret = token.partition(".")
        rec = self.get(share_id, fresh=True) if secret else None
        if rec is None or not hmac.compare_digest(rec.secret_sha256, _hash(secret)):
            return None
        return rec

    def revoke(self, share_id: str, by: str) -> Share:
        rec = self.get(share_id, fresh=True)
        if rec is None:
            raise NotFound(f"no share link {share_id!r}")
        if rec.revoked_at is None:
            rec.revoked_at, rec.revoked_by = time.time(), by
            self._write(rec, create=False)
        return rec

    def list(self) -> list[Share]:
        out = []
        for info in self.store.list(SHARES_PREFIX):
            rec = self._read(info.key[len(SHARES_PREFIX) : -len(".json")])
            if rec is not None:
                out.append(rec)
        return out


# ---- scope of a share session ------------------------------------------------------------------


def scope_verdict(
    study: str, path: str, path_study: str | None, query: Iterable[tuple[str, str]]
) -> str:
    """`allow`, `empty` (a search that is not pinned to the study: answer nothing) or `absent`
    (a path naming another study: 404). Pure, tested from a table."""
    if not path.startswith("/dicomweb/"):
        return "allow"  # other routes: the principal's needs decide (READ only)
    if path_study is not None:
        return "allow" if path_study == study else "absent"
    values = [v for k, v in query if k.upper() in STUDY_KEYS]
    return "allow" if values == [study] else "empty"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def scope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Runs inside the guard (after authentication and the route's need)."""
    principal = request.get(PRINCIPAL)
    study = principal.study_filter() if principal is not None else None
    if study is None:
        return await handler(request)
    verdict = scope_verdict(
        study, request.path, request.match_info.get("study"), request.query.items()
    )
    if verdict == "absent":
        raise NotFound("no such study, series or instance")
    if verdict == "empty":
        request[AUDIT]["detail"] = "QIDO outside the shared study: no results"
        return web.Response(status=204)
    return await handler(request)


# ---- HTTP: the JSON API (guarded) and the link itself (public) ---------------------------------


def _svc(request: web.Request) -> Services:
    from cloud_api.app import SERVICES

    return request.app[SERVICES]


def study_visible(svc: Services, p: Principal, study_uid: str) -> bool:
    """Whether the study is in the catalog within the principal's sites."""
    q = qido.parse_query(qido.STUDY, [("StudyInstanceUID", study_uid)], {}, 1, p.site_filter())
    return bool(svc.catalog.search(q.search))


def link_path(token: str) -> str:
    return f"/share/{token}"


async def api_share_create(request: web.Request) -> web.Response:
    """Admin or reader: a link to one study of its sites. JSON: study_uid, hours."""
    svc, p = _svc(request), request[PRINCIPAL]
    try:
        body = await request.json()
        study, hours = str(body["study_uid"]), float(body.get("hours", 72))
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRequest('expected JSON {"study_uid": "...", "hours": 72}') from exc
    request[AUDIT]["study_uid"] = study[:128]
    if not is_valid_uid(study):
        raise BadRequest(f"not a valid Study Instance UID: {study[:80]!r}")
    if not await asyncio.to_thread(study_visible, svc, p, study):
        raise NotFound("no such study")
    sites = ["*"] if p.all_sites else list(p.sites)
    rec, token = await asyncio.to_thread(svc.shares.create, study, sites, p.name, hours)
    request[AUDIT]["detail"] = f"share {rec.id} created, expires {int(rec.expires_at)}"
    path = link_path(token)
    out = {**rec.public(), "path": path, "url": f"{request.scheme}://{request.host}{path}"}
    return web.json_response(out, status=201)


def _mine(p: Principal, rec: Share) -> bool:
    return p.role == "admin" or rec.created_by == p.name


async def api_share_list(request: web.Request) -> web.Response:
    """Admin: every link; reader: the links it created."""
    svc, p = _svc(request), request[PRINCIPAL]
    recs = await asyncio.to_thread(svc.shares.list)
    return web.json_response([r.public() for r in recs if _mine(p, r)])


async def api_share_revoke(request: web.Request) -> web.Response:
    svc, p = _svc(request), request[PRINCIPAL]
    share_id = request.match_info["share_id"]
    rec = await asyncio.to_thread(svc.shares.get, share_id, True)
    if rec is None or not _mine(p, rec):
        raise NotFound(f"no share link {share_id!r}")
    rec = await asyncio.to_thread(svc.shares.revoke, share_id, p.name)
    request[AUDIT].update(study_uid=rec.study_uid, detail=f"share {rec.id} revoked")
    return web.json_response(rec.public())


INTERSTITIAL = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hpacs: opening a shared study</title>
<meta http-equiv="refresh" content="0;url={url}"></head>
<body><p>Opening the shared study&hellip; <a href="{url}">continue</a></p></body></html>
"""


def viewer_url(study_uid: str) -> str:
    return f"/viewer/viewer?StudyInstanceUIDs={quote(study_uid)}"


def interstitial(study_uid: str) -> web.Response:
    """A page that moves on to the viewer. The link usually arrives from another site (mail),
    and a SameSite=Strict cookie is not sent on that navigation nor on its redirects; the
    navigation this page starts is same-site, so the viewer request carries the session."""
    body = INTERSTITIAL.format(url=escape(viewer_url(study_uid)))
    return web.Response(
        text=body,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        },
    )
