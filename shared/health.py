"""Liveness and readiness checks shared by the edge, the cloud API and the sync agent.

`/healthz` says the process answers; `/readyz` says it can do its job: its SQLite index takes a
write lock and its object store's bucket answers a listing, each within a deadline. A check
that hangs (a dead GCS endpoint retrying) reports "timed out" instead of hanging the probe.

`StoreReadiness` is how a service starts before its object store is ready (an emulator or a
bucket created after it, under `make up` or a service manager): it never exits for that, it
retries with capped backoff and says so once in its log, one WARNING, then one INFO when ready.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shared.errors import NotFound, PacsError, TransientStoreError
from shared.store.base import ObjectStore

Check = tuple[Callable[..., Any], tuple[Any, ...]]


def index_writable(index_path: str | Path, timeout_s: float) -> None:
    """Take SQLite's write lock and let go: proves the file and its directory are writable."""
    conn = sqlite3.connect(str(index_path), timeout=timeout_s, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    finally:
        conn.close()


READY_PREFIX = "healthz/"  # listed, never written: an empty answer is a good one
STORE_RETRY_INITIAL_S = 0.2
STORE_RETRY_MAX_S = 5.0


def store_reachable(store: ObjectStore) -> None:
    """The store answers and its bucket exists: a listing of a prefix that need not hold
    anything. A head cannot tell: GCS answers 404 alike for a missing object and a missing
    bucket, and a listing of a missing bucket is a 404 (NotFound)."""
    try:
        next(iter(store.list(READY_PREFIX)), None)
    except NotFound as exc:
        raise TransientStoreError(
            f"the bucket of {store.url} does not exist (yet)",
            hint="create the bucket, or start its emulator (`make up` does)",
        ) from exc


class StoreReadiness:
    """Whether a service's object store is ready, said once each way in the service's log."""

    def __init__(self, store: ObjectStore, log: logging.Logger) -> None:
        self.store = store
        self.log = log
        self.ready = False
        self.reason = "not checked yet"
        self._warned = False

    def check(self) -> bool:
        """One attempt: True once the store is ready (blocking I/O: run it off any event loop)."""
        try:
            store_reachable(self.store)
        except (PacsError, OSError) as exc:
            self.ready = False
            self.reason = f"{type(exc).__name__}: {exc}"[:200]
            if not self._warned:
                self._warned = True
                self.log.warning(
                    "object store not ready; waiting for it, retrying with backoff store=%s "
                    "error=%s hint=%s",
                    self.store.url,
                    self.reason,
                    getattr(exc, "hint", ""),
                )
            return False
        if not self.ready and self._warned:
            self.log.info("object store ready store=%s", self.store.url)
        self.ready, self.reason, self._warned = True, "ok", False
        return True

    def wait(self, stop: threading.Event) -> bool:
        """Retry until ready (True) or until `stop` is set (False)."""
        for delay in retry_delays():
            if self.check():
                return True
            if stop.wait(delay):
                return False
        return False  # pragma: no cover - retry_delays is endless


def retry_delays(
    initial_s: float = STORE_RETRY_INITIAL_S, max_s: float = STORE_RETRY_MAX_S
) -> Iterator[float]:
    """Endless capped exponential delays with +-20% jitter."""
    delay = initial_s
    while True:
        yield delay * random.uniform(0.8, 1.2)
        delay = min(delay * 2, max_s)


async def probe(fn: Callable[..., Any], timeout_s: float, *args: Any) -> str:
    """'ok' or why the check failed, within a deadline (the check runs in a worker thread)."""
    try:
        await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout_s)
    except TimeoutError:
        return f"timed out after {timeout_s:g}s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    return "ok"


async def readiness(checks: dict[str, Check], timeout_s: float) -> tuple[bool, dict[str, Any]]:
    """Run the checks concurrently; (ready, JSON body for /readyz)."""
    names = list(checks)
    results = await asyncio.gather(*(probe(checks[n][0], timeout_s, *checks[n][1]) for n in names))
    status = dict(zip(names, results, strict=True))
    ok = all(v == "ok" for v in status.values())
    return ok, {"status": "ready" if ok else "not ready", "checks": status}
