"""Per-association bookkeeping, attached to pynetdicom's Association object."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pynetdicom.association import Association

from shared.registry import Node


@dataclass
class AssocInfo:
    """What we know about one association; attached to the pynetdicom Association."""

    calling_ae: str
    peer: str
    node: Node | None = None
    counted: bool = False
    slot: Any = None  # edge.slots.Slot while counted
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    failed: int = 0
    stats: dict[str, int] = field(default_factory=dict)


def assoc_info(assoc: Association) -> AssocInfo:
    info = getattr(assoc, "hpacs_info", None)
    if info is None:
        req = assoc.requestor
        calling = req.primitive.calling_ae_title if req.primitive is not None else req.ae_title
        info = AssocInfo(calling_ae=(calling or "").strip(), peer=str(req.address))
        assoc.hpacs_info = info  # type: ignore[attr-defined]
    return info
