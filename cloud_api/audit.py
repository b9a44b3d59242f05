"""The cloud API's audit trail: what a request record says, when it ships, how it is verified.

The chain itself (HMAC under a key kept apart from the log, size rotation, create-only segments
and checkpoints) is `shared.audit`; this adapter fixes the record's fields and the service name
(`cloud_api`: objects under `audit/cloud_api/`), and names the replica so that every replica of
the API keeps its own chain in one bucket.

Records never contain patient names, IDs or birth dates: the study UID is the handle.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shared.audit import AuditChain, AuditKey, load_key, log_files, open_files, retire_legacy
from shared.audit_verify import Report, verify
from shared.auditlog import ShippedLog, replica_id
from shared.config import CloudConfig
from shared.store.base import ObjectStore

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


class AuditLog(ShippedLog):
    """Request events of one replica, chained under `<data_dir>/audit*.jsonl`; shipping and
    verify: `shared.auditlog.ShippedLog`."""

    log = logging.getLogger("hpacs.cloud.audit")

    def __init__(
        self, data_dir: str | Path, key: AuditKey, replica: str = "", max_bytes: int = 64 * 1024**2
    ) -> None:
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if retire_legacy(self.dir):  # an unkeyed log: its shipped copies keep the old name
            (self.dir / "replica_id").unlink(missing_ok=True)
        self.replica = replica or replica_id(self.dir, "r")
        self.chain = AuditChain(
            self.dir, key, service=SERVICE, replica=self.replica, max_bytes=max_bytes
        )
        self.path = self.chain.path  # the current file (rotated ones: `files()`)

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
