"""The cloud API's audit trail: what a request record says, when it ships, how it is verified.

The chain itself (HMAC under a key kept apart from the log, size rotation, create-only segments
and checkpoints) is `shared.audit`; this adapter fixes the record's fields and the service name
(`cloud_api`: objects under `audit/cloud_api/`), and names the replica so that every replica of
the API keeps its own chain in one bucket.

Records never contain patient names, IDs or birth dates: the study UID is the handle.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from shared.audit import (
    AuditChain,
    AuditKey,
    Shipment,
    load_key,
    log_files,
    open_files,
    retire_legacy,
)
from shared.audit_verify import Report, verify
from shared.config import CloudConfig
from shared.errors import PacsError
from shared.store.base import ObjectStore

log = logging.getLogger("hpacs.cloud.audit")

SERVICE = "cloud_api"
KEY_SETTING = "cloud.audit_key"


def audit_key(cfg: CloudConfig, *, create: bool) -> AuditKey:
    """The configured key; `serve` creates a missing key file, `verify` never does."""
    return load_key(
        cfg.audit_key,
        setting=KEY_SETTING,
        default_path=Path(cfg.data_dir) / "audit.key",
        create=create,
    )


class AuditLog:
    """Request events of one replica, chained under `<data_dir>/audit*.jsonl`."""

    def __init__(
        self, data_dir: str | Path, key: AuditKey, replica: str = "", max_bytes: int = 64 * 1024**2
    ) -> None:
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if retire_legacy(self.dir):  # an unkeyed log: its shipped copies keep the old name
            (self.dir / "replica_id").unlink(missing_ok=True)
        self.replica = replica or replica_id(self.dir)
        self.chain = AuditChain(
            self.dir, key, service=SERVICE, replica=self.replica, max_bytes=max_bytes
        )
        self.path = self.chain.path  # the current file (rotated ones: `files()`)
        self._last_ship = 0.0

    @property
    def seq(self) -> int:
        return self.chain.seq

    def record(
        self,
        *,
        action: str,
        outcome: str,
        token: str = "",
        role: str = "",
        client: str = "",
        study_uid: str = "",
        status: int = 0,
        detail: str = "",
        count: int = 0,
    ) -> dict[str, Any]:
        """Append one event (who, from where, what, which study, result); `count` > 0 marks
        an aggregate of that many requests (denied ones, per client and window)."""
        event: dict[str, Any] = {
            "token": token,
            "role": role,
            "client": client,
            "action": action,
            "study_uid": study_uid,
            "outcome": outcome,
            "status": status,
            "detail": detail[:200],
        }
        if count:
            event["count"] = count
        return self.chain.append(event)

    def files(self) -> list[Path]:
        return self.chain.files()

    def sync(self) -> None:
        self.chain.sync()

    def close(self) -> None:
        self.chain.close()

    def ship(self, store: ObjectStore) -> int:
        """Ship what is new; returns how many records went out."""
        shipped: list[Shipment] = self.chain.ship(store)
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
            log.warning("audit shipment failed error=%s hint=%s", exc, exc.hint)
            return 0

    def verify(self, store: ObjectStore | None, *, segments: bool = False) -> Report:
        with self.chain.opened() as files:
            return verify(
                files,
                self.chain.key,
                replica=self.replica,
                service=SERVICE,
                store=store,
                segments=segments,
            )


def verify_dir(
    data_dir: Path,
    key: AuditKey,
    store: ObjectStore | None,
    *,
    segments: bool = False,
    replica: str = "",
) -> Report:
    """Verify a replica's log without opening it for writing (the CLI, a copied data dir)."""
    rid = replica or (data_dir / "replica_id").read_text().strip()
    with open_files(log_files(data_dir)) as files:
        return verify(files, key, replica=rid, service=SERVICE, store=store, segments=segments)


def replica_id(data_dir: Path) -> str:
    """A stable id per data directory, so each replica's chain has its own name in the bucket."""
    p = data_dir / "replica_id"
    if p.exists():
        return p.read_text().strip()
    rid = "r" + os.urandom(4).hex()
    p.write_text(rid)
    return rid
