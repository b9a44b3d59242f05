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
import time
from pathlib import Path
from typing import Any

from shared.audit import AuditChain, AuditKey, load_key
from shared.audit_verify import Report, verify
from shared.config import Config
from shared.errors import PacsError
from shared.store.base import ObjectStore

log = logging.getLogger("hpacs.audit.site")

KEY_SETTING = "edge.audit_key"
TAIL_BYTES = 512 * 1024  # the console reads the newest records from the end of each file


def audit_key(cfg: Config, *, create: bool) -> AuditKey:
    return load_key(
        cfg.edge.audit_key,
        setting=KEY_SETTING,
        default_path=Path(cfg.edge.data_dir) / "audit.key",
        create=create,
    )


class SiteAudit:
    """The site's chain: service = the site (`sync.site`), one replica id per data dir."""

    def __init__(self, cfg: Config) -> None:
        self.dir = Path(cfg.edge.data_dir) / "audit"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.service = cfg.sync.site
        self.replica = _replica_id(self.dir)
        self.chain = AuditChain(
            self.dir,
            audit_key(cfg, create=True),
            service=self.service,
            replica=self.replica,
            max_bytes=cfg.edge.audit_max_bytes,
            shared=True,
        )
        self._last_ship = 0.0

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

    def ship(self, store: ObjectStore) -> int:
        shipped = self.chain.ship(store)
        self._last_ship = time.monotonic()
        return sum(s.last_seq - s.first_seq + 1 for s in shipped)

    def ship_due(self, store: ObjectStore, interval_s: float) -> int:
        if time.monotonic() - self._last_ship < interval_s:
            return 0
        try:
            return self.ship(store)
        except PacsError as exc:
            self._last_ship = time.monotonic()
            log.warning("audit shipment failed error=%s hint=%s", exc, exc.hint)
            return 0

    def verify(self, store: ObjectStore | None) -> Report:
        with self.chain.opened() as files:
            return verify(
                files, self.chain.key, replica=self.replica, service=self.service, store=store
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

    def close(self) -> None:
        self.chain.close()


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    return {k: v for k, v in rec.items() if k not in ("prev", "mac", "key")}


def _replica_id(directory: Path) -> str:
    """A stable id per data directory (`e` + 8 hex), so two edges of one site never collide."""
    p = directory / "replica_id"
    try:
        return p.read_text().strip()
    except FileNotFoundError:
        rid = "e" + os.urandom(4).hex()
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return p.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(rid)
        return rid
