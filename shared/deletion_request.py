"""Deletion requests and their outcome: the contract between the cloud API and a site's agent.

DICOMweb `DELETE` on the cloud API (an admin) cannot reach into a hospital network, so for
each edge site holding the target it writes a `DeletionRequest` to
`control/<site>/deletions/<id>.json` (`shared.keys.deletion_key`); the site's sync agent polls
that prefix and applies it through the edge's one deletion path (shared/deletion.py: the
site's retention rules and legal holds decide), then writes `<id>.status.json` with a
`DeletionStatus`: `done`, `refused` (a rule or a hold said no; `detail` says which) or
`failed`. For the cloud's own STOW site (`cloud`) the API applies the deletion itself and
writes the same documents, later `purged` once the grace is over. Neither side imports the
other; only these JSON documents travel (as restores do: shared/control.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.control import load_document, new_request_id
from shared.errors import BadRequest
from shared.keys import check_request_id

FORMAT = 1
PHASES = ("pending", "done", "refused", "failed", "purged")
TERMINAL = frozenset({"refused", "failed", "purged"})

new_deletion_id = new_request_id  # sortable by time, unique by a random tail


def check_deletion_id(request_id: str) -> str:
    return check_request_id(request_id, "deletion")


@dataclass(frozen=True)
class DeletionRequest:
    id: str
    site: str
    study_uid: str
    series_uid: str = ""
    sop_instance_uid: str = ""
    reason: str = ""
    override: bool = False  # lift retention (the requester is an admin); never a legal hold
    requested_by: str = ""  # the token's name, for the audit trails
    requested_at: float = field(default_factory=time.time)
    v: int = FORMAT

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> DeletionRequest:
        d = _load(data)
        try:
            return cls(
                id=check_deletion_id(str(d["id"])),
                site=str(d["site"]),
                study_uid=str(d["study_uid"]),
                series_uid=str(d.get("series_uid", "")),
                sop_instance_uid=str(d.get("sop_instance_uid", "")),
                reason=str(d.get("reason", ""))[:500],
                override=bool(d.get("override", False)),
                requested_by=str(d.get("requested_by", ""))[:80],
                requested_at=float(d.get("requested_at", 0.0)),
                v=int(d.get("v", FORMAT)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f"bad deletion request: {exc}") from exc


@dataclass(frozen=True)
class DeletionStatus:
    id: str
    site: str
    phase: str
    updated_at: float
    instances: int = 0
    detail: str = ""  # why refused or failed; never patient data
    agent: str = ""
    purge_after: float = 0.0  # the cloud site: when its objects may go
    objects: list[dict[str, str]] = field(default_factory=list)  # the cloud site's instances
    v: int = FORMAT

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise BadRequest(f"unknown deletion phase {self.phase!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> DeletionStatus:
        d = _load(data)
        try:
            return cls(
                id=check_deletion_id(str(d["id"])),
                site=str(d["site"]),
                phase=str(d["phase"]),
                updated_at=float(d["updated_at"]),
                instances=int(d.get("instances", 0)),
                detail=str(d.get("detail", "")),
                agent=str(d.get("agent", "")),
                purge_after=float(d.get("purge_after", 0.0)),
                objects=list(d.get("objects") or []),
                v=int(d.get("v", FORMAT)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest(f"bad deletion status: {exc}") from exc


def _load(data: bytes) -> dict[str, Any]:
    return load_document(data, "deletion")
