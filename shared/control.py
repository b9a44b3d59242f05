"""Control requests: what the cloud API asks of a site's agent, and the agent's answer.

The cloud API cannot reach into a hospital network. For each thing it asks of a site (a
restore: shared/restore.py; a deletion: shared/deletion_request.py) it writes a request
document `control/<site>/<kind>/<id>.json` (`shared.keys.control_key`); the site's sync agent
polls that prefix, does the work and writes `<id>.status.json` beside it; the API reads that
back for the request's status URL. Only these JSON documents travel, so neither side imports
the other and no inbound connection is needed. This module is the plumbing both kinds share:
ids, parsing a document, writing and reading them, and the agent's listing.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from shared.errors import BadRequest, NotFound, PacsError
from shared.keys import (
    CONTROL_KINDS,
    control_key,
    control_prefix,
    control_request_id,
    control_status_key,
    is_control_status_key,
)
from shared.store.base import ObjectStore

log = logging.getLogger("hpacs.control")


class _Request(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_Request)


def new_request_id(now: float | None = None) -> str:
    """Sortable by time (so listing the prefix lists requests in order), unique by a random tail."""
    t = time.gmtime(now if now is not None else time.time())
    return time.strftime("%Y%m%dT%H%M%SZ", t) + "-" + secrets.token_hex(4)


def load_document(data: bytes, what: str) -> dict[str, Any]:
    """A request or status document as a dict; BadRequest (naming `what`) when it is not one."""
    try:
        d = json.loads(data)
    except ValueError as exc:
        raise BadRequest(f"{what} document is not JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise BadRequest(f"{what} document must be a JSON object")
    return d


def put_request(store: ObjectStore, kind: str, site: str, request_id: str, data: bytes) -> None:
    store.put(control_key(site, kind, request_id), data, content_type="application/json")


def put_status(store: ObjectStore, kind: str, site: str, request_id: str, data: bytes) -> None:
    """Write (or overwrite: progress) the status beside a request."""
    store.put(
        control_status_key(site, kind, request_id),
        data,
        content_type="application/json",
        if_absent=False,
    )


def status(store: ObjectStore, kind: str, site: str, request_id: str) -> bytes | None:
    """The status document beside a request as it is now, None while none is written."""
    try:
        with store.open(control_status_key(site, kind, request_id)) as fh:
            return fh.read()
    except NotFound:
        return None


def read_status(store: ObjectStore, kind: str, site: str, request_id: str) -> bytes | None:
    """The API's status read: as `status`, but NotFound when there is no such request."""
    if store.head(control_key(site, kind, request_id)) is None:
        raise NotFound(f"no {CONTROL_KINDS[kind]} {request_id} for site {site}")
    return status(store, kind, site, request_id)


def request_ids(store: ObjectStore, kind: str, site: str) -> list[str]:
    """The ids of the site's requests of `kind`, in id (so time) order."""
    ids = (control_request_id(i.key) for i in store.list(control_prefix(site, kind)))
    return [i for i in ids if i is not None]


def statuses(store: ObjectStore, kind: str, site: str) -> Iterator[bytes]:
    """Every status document of the site's requests of `kind`, in id order."""
    for info in list(store.list(control_prefix(site, kind))):
        if is_control_status_key(info.key):
            with store.open(info.key) as fh:
                yield fh.read()


def requests(
    store: ObjectStore, kind: str, site: str, parse: Callable[[bytes], R]
) -> Iterator[tuple[R, bool]]:
    """The agent's poll: every readable request of the site in id order, with whether a status
    document stood beside it in the one listing taken first. An unreadable request is logged
    and passed over (it is never retried into a loop)."""
    keys = [i.key for i in store.list(control_prefix(site, kind))]
    answered = {k for k in keys if is_control_status_key(k)}
    for key in keys:
        if control_request_id(key) is None:
            continue
        try:
            with store.open(key) as fh:
                req = parse(fh.read())
        except PacsError as exc:
            log.error("unreadable %s request key=%s error=%s", CONTROL_KINDS[kind], key, exc)
            continue
        yield req, control_status_key(site, kind, req.id) in answered
