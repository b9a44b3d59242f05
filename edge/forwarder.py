"""The forwarder: drains the routing queue to registered nodes, in the background of `serve`.

Ingest only inserts jobs (edge/routequeue.py, inside its own transaction); this loop claims due
jobs per destination, at most `concurrency` batches in flight per destination (the largest
`concurrency` of the routes that name it), one study per batch so that one association
carries it, and records every outcome in the row. Retries back off per route; a job that
exhausts `max_attempts` or meets a permanent error lands in the dead letter with its reason.
The network send itself is the retrieve path's sender (edge/sender.py), injected as `send`.
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from edge.cache import Cache
from edge.ingest import Ingestor
from edge.locate import INSTANCE_COLUMNS, InstanceRef, Locator, Recaller
from edge.routequeue import (
    Job,
    JobState,
    claim,
    due_destinations,
    enqueue,
    mark_failed,
    mark_sent,
    prune_sent,
    recover,
)
from edge.routestore import RouteTable
from edge.routing import backoff_s
from edge.sender import CacheSource, send_instances
from shared.config import Config, RouteConfig
from shared.deletion import visible_sql
from shared.dicom import Header
from shared.index import Database
from shared.registry import Node, get_node
from shared.rows import Origin

log = logging.getLogger("hpacs.edge.forwarder")

SENT_RETENTION_S = 7 * 86400
MAX_WORKERS = 64


@dataclass(frozen=True)
class SendResult:
    """What happened to one job's instance; `permanent` skips the remaining attempts."""

    ok: bool
    error: str = ""
    permanent: bool = False


# (destination node, claimed jobs of one study) -> result per job id. Raising means the whole
# batch failed transiently (association refused, timeout...).
Sender = Callable[[Node, list[Job]], dict[int, SendResult]]


def attach_routing(ingestor: Ingestor, routes: list[RouteConfig]) -> RouteTable:
    """Enqueue forward jobs for every stored instance that matches a rule: the config's
    `routes` and the console's (edge/routestore.py), re-read inside the ingest transaction
    when they changed, so an edit applies to the next instance without a restart."""
    table = RouteTable(routes)

    def _enqueue(conn: sqlite3.Connection, header: Header, origin: Origin) -> None:
        rules = table.rules(conn)
        if rules:
            enqueue(conn, rules, header, origin.calling_ae, time.time())

    ingestor.on_indexed.append(_enqueue)
    return table


class Forwarder:
    def __init__(
        self,
        db: Database,
        cfg: Config,
        send: Sender,
        *,
        poll_interval_s: float = 0.5,
        batch_size: int = 64,
    ) -> None:
        self.db = db
        self.send = send
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        # the config's routes and the console's, reloaded at each dispatch when they changed
        self.table = RouteTable(cfg.routes)
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Reused worker threads (each keeps one index reader), started on demand; the limits
        # per destination bound what runs, this only caps threads when routes are added live.
        self._pool = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="forward")
        self._futures: set[Future[None]] = set()
        self._last_prune = 0.0

    # ---- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        with self.db.write() as conn:
            n = recover(conn)
        if n:
            log.info("requeued forward jobs interrupted by a restart count=%d", n)
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop dispatching and join every thread, so none outlives the index it writes to.

        A thread left running logged and wrote after its caller had closed the database and
        the log stream. A send still in flight after `timeout_s` is waited for anyway: it ends
        at the sender's own network timeout; jobs queued but not started are cancelled and
        stay `sending`, which `recover` requeues at the next start.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            running = list(self._futures)
        _, stuck = wait(running, timeout=timeout_s)
        if stuck:
            log.warning("forward sends still running at stop count=%d", len(stuck))
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatch()
            except Exception:  # the loop must outlive a bad moment of the index
                log.exception("forwarder dispatch failed")
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()

    # ---- dispatch ----------------------------------------------------------------------
    def dispatch(self) -> int:
        """Start a worker for every destination with due jobs and a free slot; returns how many."""
        now = time.time()
        if now - self._last_prune > 3600:
            with self.db.write() as conn:
                prune_sent(conn, now - SENT_RETENTION_S)
            self._last_prune = now
        started = 0
        self.table.refresh(self.db.reader())
        limits = self.table.limits()
        for dest in due_destinations(self.db.reader(), now):
            while not self._stop.is_set():
                with self._lock:
                    if self._active.get(dest, 0) >= limits.get(dest, 1):
                        break
                with self.db.write() as conn:
                    jobs = claim(conn, dest, time.time(), self.batch_size)
                if not jobs:
                    break
                with self._lock:
                    self._active[dest] = self._active.get(dest, 0) + 1
                fut = self._pool.submit(self._work, dest, jobs)
                with self._lock:
                    self._futures.add(fut)
                fut.add_done_callback(self._forget)
                started += 1
        return started

    def _forget(self, fut: Future[None]) -> None:
        with self._lock:
            self._futures.discard(fut)

    def _work(self, dest: str, jobs: list[Job]) -> None:
        try:
            self._deliver(dest, jobs)
        finally:
            with self._lock:
                self._active[dest] -= 1
            self._wake.set()  # the slot is free: more of this destination may be due

    def _deliver(self, dest: str, jobs: list[Job]) -> None:
        node = get_node(self.db.reader(), dest)
        results: dict[int, SendResult]
        if node is None:
            results = {j.id: SendResult(False, f"{dest} is not a registered node") for j in jobs}
        else:
            try:
                results = self.send(node, jobs)
            except Exception as exc:
                results = {j.id: SendResult(False, _describe(exc)) for j in jobs}
        self._record(dest, jobs, results)

    def _record(self, dest: str, jobs: list[Job], results: dict[int, SendResult]) -> None:
        now = time.time()
        sent = dead = retrying = lost = 0
        last_error = ""
        delays: dict[tuple[str, int], float] = {}
        with self.db.write() as conn:
            for job in jobs:
                res = results.get(job.id, SendResult(False, "no result from the sender"))
                if res.ok:
                    if mark_sent(conn, job.id, now):
                        sent += 1
                    else:
                        lost += 1
                    continue
                last_error = res.error
                # One delay per route and attempt count: the batch stays together next time.
                key = (job.route, job.attempts)
                if key not in delays:
                    rc = self.table.route(job.route)
                    delays[key] = backoff_s(
                        job.attempts + 1,
                        rc.backoff_initial_s if rc else 5.0,
                        rc.backoff_max_s if rc else 600.0,
                    )
                delay = delays[key]
                state = mark_failed(conn, job, res.error, now, delay, res.permanent)
                if state is None:
                    lost += 1
                elif state is JobState.DEAD:
                    dead += 1
                else:
                    retrying += 1
        if lost:  # another actor changed these jobs while they were ours: its change stands
            log.warning(
                "forward outcomes not recorded destination=%s count=%d: the jobs were no "
                "longer in state sending (requeued by another process?)",
                dest,
                lost,
            )
        if dead or retrying:
            log.warning(
                "forward failed destination=%s sent=%d retrying=%d dead=%d error=%s",
                dest,
                sent,
                retrying,
                dead,
                last_error,
            )
        else:
            log.info("forwarded destination=%s instances=%d", dest, sent)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def dimse_sender(
    our_ae_title: str,
    db: Database,
    cache: Cache,
    *,
    recaller: Recaller | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout_s: float = 30.0,
) -> Sender:
    """The forwarder's sender: the retrieve path's `send_instances` (one association per batch,
    transfer syntax converted when the destination needs it)."""

    source = CacheSource(Locator(db, cache, recaller), reader="routing")

    def send(node: Node, batch: list[Job]) -> dict[int, SendResult]:
        by_uid = {j.sop_instance_uid: j for j in batch}
        marks = ",".join("?" * len(by_uid))
        rows = (
            db.reader()
            .execute(
                f"SELECT {INSTANCE_COLUMNS} FROM instances i WHERE i.sop_instance_uid IN ({marks})"
                f" AND {visible_sql('i')}",
                list(by_uid),
            )
            .fetchall()
        )
        refs = [InstanceRef.from_row(r) for r in rows]
        out = {
            j.id: SendResult(
                False, "the instance was deleted or is not in the index", permanent=True
            )
            for j in batch
        }
        report = send_instances(
            our_ae_title,
            node,
            refs,
            source,
            timeout_s=timeout_s,
            ssl_context=ssl_context,
        )
        if report.error:
            raise ConnectionError(report.error)
        for sub in report.results:
            job = by_uid[sub.sop_instance_uid]
            if sub.outcome in ("completed", "warning"):
                out[job.id] = SendResult(True)
            else:
                out[job.id] = SendResult(False, sub.reason, permanent=_permanent(sub.reason))
        return out

    return send


def _permanent(reason: str) -> bool:
    """No retry can help when we cannot produce a syntax the destination accepts."""
    return "no conversion available" in reason or reason.startswith("converting ")
