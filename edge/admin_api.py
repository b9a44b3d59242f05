"""The console's administrative API on the edge: nodes, route rules, users, the audit trail.

Each handler parses the JSON body (errors name the field: `InvalidField` -> 400 problem+json
with `field`), calls the registry / route store / user functions inside one index
transaction, writes one audit record (who, what, the optional `reason` of the body, the
result) and answers JSON. Which role may call which route is the route table's business
(edge/http.py), checked before any handler runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from edge import routestore, studysend, users
from edge.audit import EdgeAudit
from edge.scu import echo, node_ssl_context
from edge.webauth import Principal
from shared.config import PERMISSIONS, Config
from shared.errors import Conflict, InvalidField, NotFound, PacsError
from shared.index import Database
from shared.registry import (
    CONFIG,
    REGISTRY,
    Node,
    get_node,
    list_nodes,
    remove_node,
    upsert_node,
    validate_node,
)

log = logging.getLogger("hpacs.edge.admin")

PRINCIPAL = web.RequestKey("principal", Principal)  # set by the guard (edge/http.py)
MAX_BODY = 64 * 1024


async def read_json(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise InvalidField("body", f"larger than {MAX_BODY} bytes")
    raw = await request.read()
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise InvalidField("body", "not valid JSON") from exc
    if not isinstance(data, dict):
        raise InvalidField("body", "a JSON object is required")
    return data


def node_from_json(data: dict[str, Any], ae_title: str | None = None) -> Node:
    """A registry node from the console's form; every wrong field is named."""
    ae = data.get("ae_title", ae_title)
    if ae_title is not None and ae != ae_title:
        raise InvalidField("ae_title", "cannot be changed: add a new node, then remove this one")
    if not isinstance(ae, str):
        raise InvalidField("ae_title", "required")
    host = data.get("host")
    if not isinstance(host, str):
        raise InvalidField("host", "required")
    port = data.get("port")
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int):
        raise InvalidField("port", "an integer 1-65535 is required")
    perms = data.get("permissions", ["echo", "store", "find", "move", "get"])
    if isinstance(perms, str):
        perms = [p.strip() for p in perms.split(",") if p.strip()]
    if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
        raise InvalidField("permissions", f"a list among {', '.join(PERMISSIONS)}")
    tls = data.get("tls", False)
    if not isinstance(tls, bool):
        raise InvalidField("tls", "true or false")
    limit = data.get("max_associations", 0)
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidField("max_associations", "an integer (0: only the global limit)")
    return Node(
        ae.strip(), host.strip(), port, tls=tls, permissions=frozenset(perms),
        max_associations=limit, source=REGISTRY,
    )  # fmt: skip


def _reason(data: dict[str, Any]) -> str:
    reason = data.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise InvalidField("reason", "text of at most 500 characters")
    return reason.strip()


class AdminApi:
    def __init__(self, cfg: Config, db: Database, audit: EdgeAudit) -> None:
        self.cfg = cfg
        self.db = db
        self.audit = audit

    # ---- helpers ---------------------------------------------------------------------
    def _record(
        self, request: web.Request, action: str, target: str, outcome: str, **kw: str
    ) -> None:
        p: Principal = request[PRINCIPAL]
        self.audit.record(
            action=action,
            actor=p.name,
            role=p.role,
            client=request.remote or "",
            target=target,
            outcome=outcome,
            **kw,
        )

    async def _change(
        self,
        request: web.Request,
        action: str,
        target: str,
        reason: str,
        work: Callable[[], Any],
        **kw: str,
    ) -> Any:
        """Run one change in a worker thread; audit its outcome (ok, or error with why)."""
        try:
            result = await asyncio.to_thread(work)
        except PacsError as exc:
            self._record(request, action, target, "error", reason=reason, detail=str(exc), **kw)
            raise
        self._record(request, action, target, "ok", reason=reason, **kw)
        log.info("console %s target=%s by=%s", action, target, request[PRINCIPAL].name)
        return result

    # ---- nodes -----------------------------------------------------------------------
    async def nodes(self, request: web.Request) -> web.Response:
        """Both sources, apart: config rows, registry rows (shadowed when a config row of the
        same AE title is in force)."""

        def listing() -> dict[str, Any]:
            rows = list_nodes(self.db.reader())
            configured = {n.ae_title for n in rows if n.source == CONFIG}
            out: dict[str, list[dict[str, Any]]] = {"config": [], "registry": []}
            for n in rows:
                d = n.as_dict() | {"shadowed": n.source == REGISTRY and n.ae_title in configured}
                out[n.source].append(d)
            return out

        return web.json_response(await asyncio.to_thread(listing))

    async def node_create(self, request: web.Request) -> web.Response:
        data = await read_json(request)
        node = node_from_json(data)
        node = replace(node, added_by=f"console:{request[PRINCIPAL].name}")

        def work() -> None:
            with self.db.write() as conn:
                if get_node(conn, node.ae_title, REGISTRY) is not None:
                    raise Conflict(f"node {node.ae_title!r} exists: edit it instead")
                if get_node(conn, node.ae_title, CONFIG) is not None:
                    raise Conflict(f"{node.ae_title!r} is in [[nodes]] of the config file")
                upsert_node(conn, node)

        await self._change(request, "node-add", node.ae_title, _reason(data), work)
        return web.json_response(node.as_dict(), status=201)

    async def node_update(self, request: web.Request) -> web.Response:
        ae = request.match_info["ae"]
        data = await read_json(request)
        node = node_from_json(data, ae_title=ae)

        def work() -> Node:
            with self.db.write() as conn:
                old = get_node(conn, ae, REGISTRY)
                if old is None:
                    if get_node(conn, ae, CONFIG) is not None:
                        raise Conflict(f"{ae!r} comes from [[nodes]]: edit the config file")
                    raise NotFound(f"no node {ae!r}")
                new = replace(node, added_by=old.added_by)
                upsert_node(conn, new)
                return new

        new = await self._change(request, "node-update", ae, _reason(data), work)
        return web.json_response(new.as_dict())

    async def node_delete(self, request: web.Request) -> web.Response:
        ae = request.match_info["ae"]
        reason = request.query.get("reason", "")[:500]

        def work() -> None:
            with self.db.write() as conn:
                if get_node(conn, ae, REGISTRY) is None:
                    if get_node(conn, ae, CONFIG) is not None:
                        raise Conflict(f"{ae!r} comes from [[nodes]]: remove it from the file")
                    raise NotFound(f"no node {ae!r}")
                used = routestore.removal_blockers(conn, self.cfg.routes, ae, REGISTRY)
                if used:
                    raise Conflict(f"{ae!r} is a destination of route(s) {', '.join(used)}")
                remove_node(conn, ae, REGISTRY)

        await self._change(request, "node-remove", ae, reason, work)
        return web.json_response({"removed": ae})

    async def node_test(self, request: web.Request) -> web.Response:
        """C-ECHO the node described by the form, before it is saved."""
        node = node_from_json(await read_json(request))
        await asyncio.to_thread(_validate, node)
        return web.json_response(await self.echo_node(node))

    async def echo_node(self, node: Node) -> dict[str, Any]:
        ctx = node_ssl_context(self.cfg.edge.tls, node)
        res = await asyncio.to_thread(
            echo, self.cfg.edge.ae_title, node, ssl_context=ctx, timeout_s=10.0
        )
        log.info(
            "console echo ae_title=%s ok=%s status=%s rtt_ms=%.1f",
            node.ae_title,
            res.ok,
            res.status,
            res.rtt_ms,
        )
        return {
            "ae_title": node.ae_title,
            "ok": res.ok,
            "status": f"0x{res.status:04X}" if res.status is not None else None,
            "rtt_ms": round(res.rtt_ms, 1),
            "detail": res.detail,
        }

    # ---- route rules -----------------------------------------------------------------
    async def rules(self, request: web.Request) -> web.Response:
        def listing() -> list[dict[str, Any]]:
            return routestore.listing(self.db.reader(), self.cfg.routes)

        return web.json_response(await asyncio.to_thread(listing))

    async def rule_save(self, request: web.Request) -> web.Response:
        create = request.method == "POST"
        data = await read_json(request)
        reason = _reason(data)
        body = {k: v for k, v in data.items() if k != "reason"}
        if not create:
            body.setdefault("name", request.match_info["name"])
            if body["name"] != request.match_info["name"]:
                raise InvalidField("name", "cannot be changed: add a new route instead")
        route = routestore.route_from_json(body)
        by = f"console:{request[PRINCIPAL].name}"

        def work() -> None:
            with self.db.write() as conn:
                routestore.save_route(conn, route, self.cfg.routes, by, create=create)

        action = "route-add" if create else "route-update"
        await self._change(request, action, route.name, reason, work)
        return web.json_response({"name": route.name}, status=201 if create else 200)

    async def rule_delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        def work() -> None:
            with self.db.write() as conn:
                routestore.delete_route(conn, name, self.cfg.routes)

        await self._change(request, "route-remove", name, request.query.get("reason", ""), work)
        return web.json_response({"removed": name})

    # ---- send a study to a node (the study browser) ------------------------------------
    async def study_send(self, request: web.Request) -> web.Response:
        """Queue a study for a registered node (`{"destination": AE}`): manual route jobs that
        the forwarder delivers (edge/studysend.py); answers the study's send progress."""
        uid = request.match_info["uid"]
        data = await read_json(request)
        dest = data.get("destination")
        if not isinstance(dest, str) or not dest.strip():
            raise InvalidField("destination", "the AE title of a registered node")
        result = await self._change(
            request,
            "study-send",
            dest.strip(),
            _reason(data),
            lambda: studysend.queue_study(self.db, uid, dest.strip()),
            study_uid=uid,
        )
        return web.json_response(result, status=202)

    async def study_sends(self, request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        return web.json_response(await asyncio.to_thread(studysend.progress, self.db, uid))

    # ---- users -----------------------------------------------------------------------
    async def users(self, request: web.Request) -> web.Response:
        rows = await asyncio.to_thread(users.list_users, self.db.reader())
        return web.json_response([u.as_dict() for u in rows])

    async def user_create(self, request: web.Request) -> web.Response:
        data = await read_json(request)
        name, role, password = data.get("name"), data.get("role"), data.get("password")
        users.check_name(name)  # type: ignore[arg-type]
        users.check_role(role)  # type: ignore[arg-type]
        users.check_password(password)  # type: ignore[arg-type]

        def work() -> users.User:
            with self.db.write() as conn:
                return users.add_user(conn, name, role, password)  # type: ignore[arg-type]

        user = await self._change(request, "user-add", name, _reason(data), work)  # type: ignore[arg-type]
        return web.json_response(user.as_dict(), status=201)

    async def user_update(self, request: web.Request) -> web.Response:
        """`role` and/or `password`; either ends the user's sessions."""
        name = request.match_info["name"]
        data = await read_json(request)
        role, password = data.get("role"), data.get("password")
        if role is None and password is None:
            raise InvalidField("role", "give a role or a password")
        if role is not None:
            users.check_role(role)
        if password is not None:
            users.check_password(password)

        def work() -> None:
            with self.db.write() as conn:
                if role is not None:
                    users.set_role(conn, name, role)
                if password is not None:
                    users.set_password(conn, name, password)

        action = "user-passwd" if role is None else "user-role"
        await self._change(request, action, name, _reason(data), work)
        return web.json_response({"name": name})

    async def user_delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        def work() -> None:
            with self.db.write() as conn:
                users.remove_user(conn, name)

        await self._change(request, "user-remove", name, request.query.get("reason", ""), work)
        return web.json_response({"removed": name})

    # ---- audit -----------------------------------------------------------------------
    async def audit_recent(self, request: web.Request) -> web.Response:
        raw = request.query.get("limit", "200")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise InvalidField("limit", "an integer 1-1000")
        recs = await asyncio.to_thread(self.audit.recent, int(raw))
        return web.json_response({"replica": self.audit.replica, "events": recs})


def _validate(node: Node) -> None:
    validate_node(node)
