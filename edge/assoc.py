"""Per-association bookkeeping of an inbound association (edge/dimse/engine.py `info`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.registry import Node


@dataclass
class AssocInfo:
    """What we know about one inbound association, from admission to its closing log line."""

    calling_ae: str
    peer: str
    called_ae: str = ""
    node: Node | None = None
    slot: Any = None  # edge.slots.Slot while counted
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    failed: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    # Work to do once the association has ended, in its thread (a commitment report whose
    # requester released before we could send it on the association).
    after: list[Callable[[], None]] = field(default_factory=list)

    def count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1
