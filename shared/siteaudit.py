"""A site's audit trail: administrative actions (nodes, routes, users, sign-ins, deletions,
holds, purges) as records of the keyed, hash-chained log of `shared.audit`, under
`<edge.data_dir>/audit/`, shipped to `audit/<site>/` in the bucket.

One call per action: `SiteAudit.record(action=..., actor=..., target=..., outcome=...)`, with
optional `study_uid` and `reason`. The edge (`edge.audit.EdgeAudit` is this class) and the sync
agent (purges, deletions requested through the cloud API) append to the same directory
(`shared=True`: an flock per append keeps one chain). Only the edge's `serve` ships; with no
object store configured (`sync.store_url = ""`) the log stays local and `verify` checks it
under its key alone.

Records carry user names, AE titles, route names and study UIDs, never patient data.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from shared.audit import AuditChain, AuditKey, load_key
from shared.auditlog import ShippedLog, replica_id
from shared.config import Config

KEY_SETTING = "edge.audit_key"
TAIL_BYTES = 512 * 1024  # the console reads the newest records from the end of each file


def audit_key(cfg: Config, *, create: bool) -> AuditKey:
    return load_key(
        cfg.edge.audit_key,
        setting=KEY_SETTING,
        default_path=Path(cfg.edge.data_dir) / "audit.key",
        create=create,
    )


class SiteAudit(ShippedLog):
    """The site's chain: service = the site (`sync.site`), one replica id per data dir
    (`e` + 8 hex); shipping and verify: `shared.auditlog.ShippedLog`."""

    log = logging.getLogger("hpacs.audit.site")

    def __init__(self, cfg: Config) -> None:
        self.dir = Path(cfg.edge.data_dir) / "audit"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.service = cfg.sync.site
        self.replica = replica_id(self.dir, "e")
        self.chain = AuditChain(
            self.dir,
            audit_key(cfg, create=True),
            service=self.service,
            replica=self.replica,
            max_bytes=cfg.edge.audit_max_bytes,
            shared=True,
        )

    def record(
        self,
        *,
        action: str,
        actor: str,
        outcome: str = "ok",
        role: str = "",
        client: str = "",
        target: str = "",
        study_uid: str = "",
        reason: str = "",
        detail: str = "",
    ) -> dict[str, Any]:
        """One event: who (actor, role, client address), what (action on target, study UID),
        why (reason), and the result (outcome: ok, denied, error)."""
        return self.chain.append(
            {
                "actor": actor[:80],
                "role": role,
                "client": client,
                "action": action,
                "target": target[:120],
                "study_uid": study_uid,
                "outcome": outcome,
                "reason": reason[:500],
                "detail": detail[:300],
            }
        )

    def recent(self, limit: int = 200) -> list[dict[str, Any]]:
        """The last records, newest first (the console's audit page)."""
        out: list[dict[str, Any]] = []
        with self.chain.opened() as files:
            for _name, fh in reversed(files):
                size = fh.seek(0, os.SEEK_END)
                start = max(0, size - TAIL_BYTES)
                fh.seek(start)
                lines = fh.read().split(b"\n")[1 if start else 0 :]
                for raw in reversed(lines):
                    if len(out) >= limit:
                        return out
                    rec = _parse(raw)
                    if rec is not None:
                        out.append(rec)
        return out


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    return {k: v for k, v in rec.items() if k not in ("prev", "mac", "key")}
