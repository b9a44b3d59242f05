"""What a service's audit log does around its chain: ship on an interval, verify, name its replica.

The site's trail (`shared.siteaudit.SiteAudit`: the edge and the sync agent) and the cloud API's
(`cloud_api.audit.AuditLog`: one chain per replica) differ in the fields of their records, the
service they ship under and where their key lives; shipping, its throttle, verifying against
the bucket and the replica's stable name are this one class.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from shared.audit import AuditChain
from shared.audit_verify import Report, verify
from shared.errors import PacsError
from shared.store.base import ObjectStore


class ShippedLog:
    """A chain (`self.chain`, set by the subclass) shipped to `audit/<service>/`."""

    chain: AuditChain
    log: logging.Logger = logging.getLogger("hpacs.audit")
    _last_ship = 0.0

    def ship(self, store: ObjectStore) -> int:
        """Ship what is new; returns how many records went out."""
        shipped = self.chain.ship(store)
        self._last_ship = time.monotonic()
        return sum(s.last_seq - s.first_seq + 1 for s in shipped)

    def ship_due(self, store: ObjectStore, interval_s: float) -> int:
        """Ship when `interval_s` has passed since the last shipment (the housekeeping tick)."""
        if time.monotonic() - self._last_ship < interval_s:
            return 0
        try:
            return self.ship(store)
        except PacsError as exc:
            self._last_ship = time.monotonic()  # retry at the next interval, not every tick
            self.log.warning("audit shipment failed error=%s hint=%s", exc, exc.hint)
            return 0

    def verify(self, store: ObjectStore | None, *, segments: bool = False) -> Report:
        with self.chain.opened() as files:
            return verify(
                files,
                self.chain.key,
                replica=self.chain.replica,
                service=self.chain.service,
                store=store,
                segments=segments,
            )

    def close(self) -> None:
        self.chain.close()


def replica_id(directory: Path, prefix: str) -> str:
    """A stable id per data directory (`prefix` + 8 hex), so each replica's chain has its own
    name in the bucket (two edges of one site, two replicas of the API never collide); created
    exclusively, so two processes starting on one directory agree on it."""
    p = directory / "replica_id"
    try:
        return p.read_text().strip()
    except FileNotFoundError:
        rid = prefix + os.urandom(4).hex()
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return p.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(rid)
        return rid
