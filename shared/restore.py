"""Restore requests and their progress: the contract between the cloud API and the sync agent.

The cloud API writes a `RestoreRequest` to `control/<site>/restores/<id>.json`
(`shared.keys.restore_key`); the site's sync agent polls that prefix, performs the restore and
overwrites `<id>.status.json` (`shared.keys.restore_status_key`) with a `RestoreStatus` as it
goes. Both sides only ever exchange these JSON documents, so neither imports the other and no
inbound connection into the hospital network is needed (the plumbing: shared/control.py).

An agent picks a request up when there is no status object beside it, or when its status is not
terminal and has not been updated for a while (the agent that held it died).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from shared.control import load_document, new_request_id
from shared.errors import BadRequest
from shared.keys import check_request_id

RESTORE_FORMAT = 1


class RestorePhase(StrEnum):
    """Where a restore is; `done` and `failed` are terminal."""

    PENDING = "pending"  # written by the API, nobody has started it
    INDEXING = "indexing"  # rebuilding the edge index from catalog/<site>/ (all `evicted`)
    CONFIG = "config"  # restoring the node registry and settings from config/<site>/
    PREFETCHING = "prefetching"  # recalling studies received within prefetch_days into the cache
    DONE = "done"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (RestorePhase.DONE, RestorePhase.FAILED)


new_restore_id = new_request_id


def check_restore_id(restore_id: str) -> str:
    return check_request_id(restore_id, "restore")


@dataclass(frozen=True)
class RestoreRequest:
    """What an admin asked for. `prefetch_days` None: the agent's `restore.prefetch_days`."""

    id: str
    site: str
    requested_at: float
    requested_by: str = ""  # token name of the admin, for the audit trail
    prefetch_days: int | None = None
    v: int = RESTORE_FORMAT

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RestoreRequest:
        d = _load(data)
        pd = d.get("prefetch_days")
        return cls(
            id=check_restore_id(str(d["id"])),
            site=str(d["site"]),
            requested_at=float(d["requested_at"]),
            requested_by=str(d.get("requested_by", "")),
            prefetch_days=None if pd is None else int(pd),
            v=int(d.get("v", RESTORE_FORMAT)),
        )


@dataclass(frozen=True)
class RestoreStatus:
    """Progress written by the agent beside the request; counters are cumulative."""

    id: str
    site: str
    phase: RestorePhase
    updated_at: float
    started_at: float = 0.0
    agent: str = ""  # host name / pid of the agent doing it
    instances_indexed: int = 0
    studies_total: int = 0
    studies_to_prefetch: int = 0
    studies_prefetched: int = 0
    instances_prefetched: int = 0
    error: str = ""  # set when phase is failed; never contains PHI
    details: dict[str, Any] = field(default_factory=dict)
    v: int = RESTORE_FORMAT

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["phase"] = self.phase.value
        return d

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RestoreStatus:
        d = _load(data)
        try:
            phase = RestorePhase(d["phase"])
        except ValueError as exc:
            raise BadRequest(f"unknown restore phase {d.get('phase')!r}") from exc
        ints = (
            "instances_indexed",
            "studies_total",
            "studies_to_prefetch",
            "studies_prefetched",
            "instances_prefetched",
        )
        return cls(
            id=check_restore_id(str(d["id"])),
            site=str(d["site"]),
            phase=phase,
            updated_at=float(d["updated_at"]),
            started_at=float(d.get("started_at", 0.0)),
            agent=str(d.get("agent", "")),
            error=str(d.get("error", "")),
            details=dict(d.get("details") or {}),
            v=int(d.get("v", RESTORE_FORMAT)),
            **{k: int(d.get(k, 0)) for k in ints},
        )


def _load(data: bytes) -> dict[str, Any]:
    return load_document(data, "restore")
