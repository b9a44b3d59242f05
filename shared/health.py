"""Liveness and readiness checks shared by the edge and the cloud API.

`/healthz` says the process answers; `/readyz` says it can do its job: its SQLite index takes a
write lock and its object store answers a head request, each within a deadline. A check that
hangs (a dead GCS endpoint retrying) reports "timed out" instead of hanging the probe.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def store_reachable(store: ObjectStore) -> None:
    """A head of a key that need not exist: any answer (even 'absent') means reachable."""
    store.head(f"healthz/{int(time.time())}")


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
