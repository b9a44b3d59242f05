"""The console's correction form (studies page): read a study's correctable attributes, correct
them. Roles technician and admin (`Need.OPERATE` in edge/http.py's route table).

`GET /api/studies/{uid}/attributes` answers the current values of the correctable attributes
(patient data, shown in the form only: the studies list itself carries none), the list of
what may be corrected and whether a correction of the study was interrupted.
`POST /api/studies/{uid}/modify` with `{"changes": {"PatientName": "..."}, "reason": "..."}`
runs the correction through the one door (edge/correction_door.py: lock, audit) in a worker
thread and answers its counts; a refusal is a problem+json naming why (400 for a wrong
attribute or value, 404 for an unknown study, 409 when a rule forbids it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from edge import correctable
from edge.admin_api import PRINCIPAL, read_json
from edge.audit import EdgeAudit
from edge.correction_door import correct
from edge.corrections import pending
from shared.config import Config
from shared.errors import BadRequest, InvalidField, NotFound
from shared.index import Database
from shared.uids import is_valid_uid

log = logging.getLogger("hpacs.edge.corrections")


class CorrectionApi:
    def __init__(self, cfg: Config, db: Database, audit: EdgeAudit) -> None:
        self.cfg = cfg
        self.db = db
        self.audit = audit

    async def attributes(self, request: web.Request) -> web.Response:
        uid = _uid(request)
        return web.json_response(await asyncio.to_thread(self._attributes, uid))

    def _attributes(self, uid: str) -> dict[str, Any]:
        cols = {k: a.column for k, a in correctable.CORRECTABLE.items()}
        row = (
            self.db.reader()
            .execute(
                f"SELECT {', '.join(cols.values())}, num_instances FROM studies "
                "WHERE study_uid = ?",
                (uid,),
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(f"no study {uid}")
        return {
            "study_uid": uid,
            "attributes": {k: row[c] or "" for k, c in cols.items()},
            "instances": row["num_instances"],
            "unfinished": uid in pending(self.db),
        }

    async def modify(self, request: web.Request) -> web.Response:
        uid = _uid(request)
        body = await read_json(request)
        changes = body.get("changes")
        if not isinstance(changes, dict):
            raise InvalidField("changes", 'an object {"KEYWORD": "new value"} is required')
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 500:
            raise InvalidField("reason", "text of at most 500 characters")
        checked = correctable.check_changes(changes)
        p = request[PRINCIPAL]
        rep = await asyncio.to_thread(
            correct, self.cfg, self.db, checked, reason.strip(), study_uid=uid,
            actor=p.name, audit=self.audit, role=p.role, client=request.remote or "",
        )  # fmt: skip
        log.info(
            "console correction study_uid=%s attributes=%s by=%s",
            uid,
            ",".join(sorted(checked)),
            p.name,
        )
        return web.json_response(
            {
                "study_uid": uid,
                "attributes": sorted(checked),
                "rewritten": rep.rewritten,
                "unchanged": rep.unchanged,
                "recalled": rep.recalled,
                "lost": rep.lost,
            }
        )


def _uid(request: web.Request) -> str:
    uid = request.match_info["uid"]
    if not is_valid_uid(uid):
        raise BadRequest(f"not a valid UID: {uid[:70]!r}")
    return uid
