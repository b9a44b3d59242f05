"""Deletions requested through the cloud API: poll `control/<site>/deletions/`, apply, report.

The contract is shared/deletion_request.py. A request without a status object beside it is
applied through the edge's one deletion path (shared/deletion.py), so this site's retention
rules and legal holds decide exactly as for `hpacs-edge studies delete`: the requester is a
cloud admin, so an override with a reason is honoured, a legal hold never. The status says
`done`, `refused` (why) or `failed` (the index could not be written; tried again next poll),
and an audit event on the site's trail records who asked and what happened. A deletion is
applied once: a `done` or `refused` request is never looked at again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from shared import control
from shared.config import Config
from shared.deletion import Actor, Target, delete
from shared.deletion_request import DeletionRequest, DeletionStatus
from shared.errors import BadRequest, Forbidden, NotFound, PacsError
from shared.index import Database
from shared.keys import DELETIONS
from shared.siteaudit import SiteAudit
from shared.store import ObjectStore

log = logging.getLogger("hpacs.sync.deletions")


def poll_deletions(cfg: Config, db: Database, store: ObjectStore) -> int:
    """Apply every new deletion request of this site; returns how many were handled."""
    n = 0
    for req, answered in control.requests(
        store, DELETIONS, cfg.sync.site, DeletionRequest.from_bytes
    ):
        if not answered:
            apply_request(cfg, db, store, req)
            n += 1
    return n


def apply_request(
    cfg: Config, db: Database, store: ObjectStore, req: DeletionRequest
) -> DeletionStatus:
    actor = Actor(f"cloud:{req.requested_by or 'admin'}", admin=True)
    phase, count, detail, outcome = "done", 0, "", "ok"
    try:
        target = Target(req.study_uid, req.series_uid, req.sop_instance_uid)
        out = delete(
            db,
            Path(cfg.edge.cache_dir),
            cfg.retention,
            target,
            actor,
            reason=req.reason,
            override=req.override,
        )
        count, detail = out.instances, out.override
    except (Forbidden, NotFound, BadRequest) as exc:  # a rule, a hold, nothing there: final
        phase, detail, outcome = "refused", str(exc), "denied"
    except PacsError as exc:
        phase, detail, outcome = "failed", f"{type(exc).__name__}: {exc}", "error"
    st = DeletionStatus(
        id=req.id,
        site=req.site,
        phase=phase,
        updated_at=time.time(),
        instances=count,
        detail=detail[:500],
        agent=f"{socket.gethostname()}:{os.getpid()}",
    )
    if phase != "failed":  # a failed one is tried again at the next poll
        control.put_status(store, DELETIONS, req.site, req.id, st.to_bytes())
    audit = SiteAudit(cfg)
    try:
        audit.record(
            action="delete",
            actor=actor.name,
            target=f"{_level(req)} (cloud request {req.id})",
            study_uid=req.study_uid,
            outcome=outcome,
            reason=req.reason,
            detail=detail,
        )
    finally:
        audit.close()
    log.info("deletion request id=%s phase=%s instances=%d", req.id, phase, count)
    return st


def _level(req: DeletionRequest) -> str:
    return "instance" if req.sop_instance_uid else ("series" if req.series_uid else "study")
