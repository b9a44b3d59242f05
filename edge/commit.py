"""Group commit: concurrent ingests share one index transaction, and so one WAL fsync.

Why: with `synchronous=FULL` every COMMIT waits for an fsync of the WAL (~0.5 ms here, several
ms on a loaded disk), and the process has one writer connection, so concurrent associations
queue behind each other's fsyncs. A store that finds a commit in progress waits; when it ends,
one waiter becomes the leader and commits everything queued meanwhile in one transaction. Each
store runs inside its own SAVEPOINT, so one store's failure (a UNIQUE conflict, a hook error)
rolls back only that store and is raised in its own thread; the others commit. Every waiter is
released only after the COMMIT returned, so invariant 1 holds for each of them. A store alone
(one association) pays nothing extra: it is its own leader at once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from shared.index import Database

Work = Callable[[sqlite3.Connection], Any]


class _Item:
    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Work) -> None:
        self.work = work
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommit:
    """Runs `work(conn)` in a shared index transaction; returns its result after COMMIT."""

    def __init__(self, db: Database, max_batch: int = 64) -> None:
        self.db = db
        self.max_batch = max_batch
        self._cv = threading.Condition()
        self._pending: list[_Item] = []
        self._leading = False
        self.batches = 0  # observability for the benchmark: commits vs stores
        self.items = 0

    def run(self, work: Work) -> Any:
        item = _Item(work)
        with self._cv:
            self._pending.append(item)
        while True:
            with self._cv:
                while not item.done and self._leading:
                    self._cv.wait()
                if item.done:
                    break
                self._leading = True
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
            try:
                self._commit(batch)
            finally:
                with self._cv:
                    self._leading = False
                    self._cv.notify_all()
        if item.error is not None:
            raise item.error
        return item.result

    def _commit(self, batch: list[_Item]) -> None:
        try:
            with self.db.write() as conn:
                if len(batch) == 1:  # alone: its failure rolls back the whole transaction
                    batch[0].result = batch[0].work(conn)
                else:
                    for it in batch:
                        conn.execute("SAVEPOINT store")
                        try:
                            it.result = it.work(conn)
                        except Exception as exc:
                            conn.execute("ROLLBACK TO store")
                            it.error = exc
                        conn.execute("RELEASE store")
        except BaseException as exc:  # BEGIN or COMMIT failed: nothing of the batch is stored
            for it in batch:
                if it.error is None:
                    it.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self.batches += 1
            self.items += len(batch)
            with self._cv:
                for it in batch:
                    it.done = True
