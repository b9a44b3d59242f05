"""The console's study actions: delete, undelete, hold, release (edge/studies.py does the work
and the audit). Who may call which is the route table's business (edge/http.py: delete,
undelete and hold need `operate`, technician or admin; release needs `admin`); an override of
retention needs the admin role on top, decided with the rules (shared/retention.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from edge.admin_api import PRINCIPAL, read_json
from edge.audit import EdgeAudit
from edge.studies import Caller, Studies
from edge.webauth import Principal
from shared.config import Config
from shared.deletion import Target
from shared.errors import InvalidField
from shared.index import Database


def _text(data: dict[str, Any], name: str, limit: int = 500) -> str:
    value = data.get(name, "")
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidField(name, f"text of at most {limit} characters")
    return value.strip()


class StudiesApi:
    def __init__(self, cfg: Config, db: Database, audit: EdgeAudit) -> None:
        self.cfg = cfg
        self.studies = Studies(cfg, db, audit)

    @staticmethod
    def _caller(request: web.Request) -> Caller:
        p: Principal = request[PRINCIPAL]
        return Caller(f"console:{p.name}", role=p.role, client=request.remote or "")

    @staticmethod
    def _target(request: web.Request, data: dict[str, Any]) -> Target:
        return Target(
            request.match_info["uid"],
            _text(data, "series_uid", 64),
            _text(data, "sop_instance_uid", 64),
        )

    async def delete(self, request: web.Request) -> web.Response:
        """Body: `reason`, optional `series_uid` / `sop_instance_uid`, `override` (admin)."""
        data = await read_json(request)
        override = data.get("override", False)
        if not isinstance(override, bool):
            raise InvalidField("override", "true or false")
        target, reason = self._target(request, data), _text(data, "reason")
        if override and not reason:
            raise InvalidField("reason", "an override needs a reason")
        who = self._caller(request)
        out = await asyncio.to_thread(self.studies.delete, who, target, reason, override)
        return web.json_response(
            {
                "deleted": out.instances,
                "already": out.already,
                "override": out.override,
                "grace_days": self.cfg.retention.delete_grace_days,
            }
        )

    async def undelete(self, request: web.Request) -> web.Response:
        data = await read_json(request)
        target, reason = self._target(request, data), _text(data, "reason")
        out = await asyncio.to_thread(self.studies.undelete, self._caller(request), target, reason)
        return web.json_response({"undeleted": out.instances, "purged": out.already})

    async def hold(self, request: web.Request) -> web.Response:
        data = await read_json(request)
        reason = _text(data, "reason")
        if not reason:
            raise InvalidField("reason", "a legal hold needs a reason")
        uid = request.match_info["uid"]
        hold = await asyncio.to_thread(
            self.studies.hold, self._caller(request), "study", uid, reason
        )
        return web.json_response({"hold": hold.id}, status=201)

    async def release(self, request: web.Request) -> web.Response:
        data = await read_json(request)
        uid = request.match_info["uid"]
        holds = await asyncio.to_thread(
            self.studies.release, self._caller(request), "study", uid, _text(data, "reason")
        )
        return web.json_response({"released": [h.id for h in holds]})
