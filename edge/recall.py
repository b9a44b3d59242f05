"""Read-through recall for retrieve: the shared recall engine (shared/recall.py) on the edge's
cache, plugged into `EdgeServer.recaller` (the hook in edge/locate.py)."""

from __future__ import annotations

from collections.abc import Callable

from edge.cache import Cache
from shared.index import Database
from shared.recall import Recaller
from shared.store import ObjectStore


class StoreRecaller(Recaller):
    def __init__(
        self,
        db: Database,
        cache: Cache,
        store: ObjectStore | Callable[[], ObjectStore],
        *,
        concurrency: int = 8,
        settle_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(
            db, cache.root, store, concurrency=concurrency, settle_timeout_s=settle_timeout_s
        )
        self.cache = cache
