"""Prometheus metrics for the three services; prometheus-client lives only in this module.

Two kinds of figures:
- Event counters (associations, stores, query latency, HTTP requests) are process-wide objects
  bumped by one-line calls from the adapters (`association_opened()`, `store_outcome()`...).
  They are created unregistered and added to each service's registry, so tests that run several
  edges in one process do not trip over duplicate registrations.
- State figures (cache bytes, sync backlog, upload errors, lost instances, the scrub's progress,
  route queue depth) are computed from the SQLite index at scrape time by `IndexCollector`: the
  edge reports what the sync agent did without any coupling to the sync process, and a restart
  loses nothing.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.lifecycle import LOCAL_STATES, State
from shared.scrubstate import load_progress

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Registry = CollectorRegistry  # for type hints elsewhere: prometheus-client stays in this module

# ---- edge: DIMSE path ------------------------------------------------------------------------
ASSOCIATIONS_TOTAL = Counter(
    "hpacs_associations", "Associations accepted since start", registry=None
)
ASSOCIATIONS_REJECTED = Counter(
    "hpacs_associations_rejected",
    "Associations rejected since start, by reason",
    ["reason"],
    registry=None,
)
INSTANCES_STORED = Counter(
    "hpacs_instances_stored",
    "Instances accepted by the ingest path, by outcome (stored, duplicate, replaced) and door "
    "(dimse, stow, hotfolder, import)",
    ["outcome", "source"],
    registry=None,
)
INSTANCES_FAILED = Counter(
    "hpacs_instances_failed",
    "C-STORE requests answered with a failure, by DIMSE status",
    ["status"],
    registry=None,
)
INGEST_BYTES = Counter(
    "hpacs_ingest_bytes",
    "Bytes of new instances written to the cache, by door",
    ["source"],
    registry=None,
)
QUERY_SECONDS = Histogram(
    "hpacs_query_duration_seconds",
    "C-FIND latency from request to last pending response, by query level",
    ["level"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=None,
)
# Lifecycle states whose file is in the cache, and those not yet in the object store.
CACHE_STATES = frozenset(s.value for s in LOCAL_STATES | {State.EVICTING})
BACKLOG_STATES = (State.CACHED.value, State.UPLOADING.value)
REJECT_REASONS = ("called_ae", "unknown_calling_ae", "address", "global_limit", "node_limit")

# ---- cloud API: HTTP -------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "hpacs_http_requests",
    "HTTP requests, by route template, method and status",
    ["route", "method", "status"],
    registry=None,
)
HTTP_SECONDS = Histogram(
    "hpacs_http_request_duration_seconds",
    "HTTP request latency, by route template and method",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=None,
)

_DIMSE = (
    ASSOCIATIONS_TOTAL,
    ASSOCIATIONS_REJECTED,
    INSTANCES_STORED,
    INSTANCES_FAILED,
    INGEST_BYTES,
    QUERY_SECONDS,
)


# ---- one-line hooks for the adapters -----------------------------------------------------------
def association_opened() -> None:
    ASSOCIATIONS_TOTAL.inc()


def association_rejected(reason: str) -> None:
    """`reason` is the admission decision's text; the label is a short fixed code."""
    ASSOCIATIONS_REJECTED.labels(rejection_code(reason)).inc()


def rejection_code(reason: str) -> str:
    """A bounded label for a rejection reason (the text carries AE titles and addresses)."""
    text = reason.lower()
    if text.startswith("called ae"):
        return "called_ae"
    if "unknown calling" in text:
        return "unknown_calling_ae"
    if text.startswith("address"):
        return "address"
    if "global association limit" in text:
        return "global_limit"
    if "node association limit" in text:
        return "node_limit"
    return "other"


def store_outcome(outcome: str, size: int, source: str = "dimse") -> None:
    """The one ingest path accepted an instance; only new bytes count as ingested."""
    INSTANCES_STORED.labels(outcome, source).inc()
    if outcome != "duplicate":
        INGEST_BYTES.labels(source).inc(size)


def store_failed(status: int) -> None:
    INSTANCES_FAILED.labels(f"0x{status:04X}").inc()


def observe_query(level: str, seconds: float) -> None:
    """C-FIND handlers call this once per query (level: PATIENT, STUDY, SERIES, IMAGE)."""
    QUERY_SECONDS.labels(level.upper() or "UNKNOWN").observe(seconds)


# ---- pure helpers ----------------------------------------------------------------------------
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b|%)?\s*$", re.IGNORECASE)


def watermark_bytes(spec: str, capacity_bytes: int) -> int:
    """`"90%"` of the cache filesystem, or an absolute size (`"500G"`, `"2TiB"`, `"1000000"`)."""
    m = _SIZE.match(spec)
    if not m:
        raise ValueError(f"not a size or a percentage: {spec!r}")
    value, unit = float(m.group(1)), (m.group(2) or "").lower()
    if unit == "%":
        return int(capacity_bytes * value / 100)
    base = 1024 if "i" in unit else 1000
    power = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit[:1]]
    return int(value * base**power)


def capacity_bytes(path: str | Path) -> int:
    st = os.statvfs(str(path))
    return st.f_blocks * st.f_frsize


# ---- scrape-time figures from the index --------------------------------------------------------
class IndexCollector(Collector):
    """Reads the SQLite index at each scrape: cache, backlog, upload errors, route queue.

    Opens its own read-only connection per scrape so it never holds a lock between scrapes
    and works from any thread (the edge's HTTP thread, a test).
    """

    def __init__(
        self,
        index_path: str | Path,
        cache_dir: str | Path,
        high_watermark: str = "90%",
        low_watermark: str = "75%",
        extra: Callable[[], Iterable[Metric]] | None = None,
    ) -> None:
        self.index_path = Path(index_path)
        self.cache_dir = Path(cache_dir)
        self.high = high_watermark
        self.low = low_watermark
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        conn = sqlite3.connect(f"file:{self.index_path}?mode=ro", uri=True, timeout=5.0)
        try:
            # Index-only over instances_state_size (migration 4): no row is read.
            per_state = {
                state: (n, size)
                for state, n, size in conn.execute(
                    "SELECT state, count(*), total(size) FROM instances GROUP BY state"
                )
            }
            # Both index-only: a row backing off after a transient upload error carries a
            # next attempt time (the uploader's retry state lives in the row).
            oldest = conn.execute(
                "SELECT min(received_at) FROM instances WHERE state IN ('cached','uploading')"
            ).fetchone()[0]
            retrying = conn.execute(
                "SELECT count(*) FROM instances "
                "WHERE state IN ('cached','uploading') AND next_attempt_at > 0"
            ).fetchone()[0]
            yield from self._cache(per_state)
            yield from self._backlog(per_state, oldest)
            yield from self._upload_errors(per_state, retrying)
            yield from self._lost(per_state)
            yield from self._scrub(conn)
            yield from self._routes(conn)
        finally:
            conn.close()
        if self.extra is not None:
            yield from self.extra()

    def _cache(self, per_state: dict[str, tuple[int, float]]) -> Iterator[Metric]:
        used = sum(v[1] for s, v in per_state.items() if s in CACHE_STATES)
        yield GaugeMetricFamily(
            "hpacs_cache_bytes", "Bytes of instances held in the cache", value=used
        )
        cap = capacity_bytes(self.cache_dir)
        g = GaugeMetricFamily(
            "hpacs_cache_watermark_bytes",
            "Eviction watermarks of the cache (sync.cache_*_watermark), in bytes",
            labels=["level"],
        )
        for level, spec in (("high", self.high), ("low", self.low)):
            try:
                g.add_metric([level], watermark_bytes(spec, cap))
            except ValueError:
                continue
        yield g
        yield GaugeMetricFamily(
            "hpacs_cache_capacity_bytes", "Size of the cache filesystem", value=cap
        )

    def _backlog(
        self, per_state: dict[str, tuple[int, float]], oldest: float | None
    ) -> Iterator[Metric]:
        backlog = [per_state.get(s, (0, 0.0)) for s in BACKLOG_STATES]
        yield GaugeMetricFamily(
            "hpacs_sync_backlog_instances",
            "Instances not yet in the object store",
            value=sum(b[0] for b in backlog),
        )
        yield GaugeMetricFamily(
            "hpacs_sync_backlog_bytes",
            "Bytes not yet in the object store",
            value=sum(b[1] for b in backlog),
        )
        age = max(0.0, time.time() - oldest) if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "hpacs_sync_backlog_oldest_age_seconds",
            "Age of the oldest instance not yet in the object store (0: none)",
            value=age,
        )

    def _upload_errors(
        self, per_state: dict[str, tuple[int, float]], retrying: int
    ) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "hpacs_upload_errors",
            "Instances whose upload is failing, by kind (permanent: failed, conflict, retrying: "
            "backing off after a transient error)",
            labels=["kind"],
        )
        g.add_metric(["permanent"], per_state.get("failed", (0, 0.0))[0])
        g.add_metric(["conflict"], per_state.get("conflict", (0, 0.0))[0])
        g.add_metric(["retrying"], retrying)
        yield g

    def _lost(self, per_state: dict[str, tuple[int, float]]) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "hpacs_instances_lost",
            "Instances with no intact copy in the cache or the object store (state lost): alert; "
            "send them again or restore them (`hpacs-sync status` lists them)",
            value=per_state.get(State.LOST.value, (0, 0.0))[0],
        )

    def _scrub(self, conn: sqlite3.Connection) -> Iterator[Metric]:
        p = load_progress(conn)
        yield CounterMetricFamily(
            "hpacs_scrub_verified_bytes",
            "Bytes of cached files re-verified by the background scrub (sync.scrub_bytes_per_s)",
            value=p.verified_bytes,
        )
        yield CounterMetricFamily(
            "hpacs_scrub_verified_instances",
            "Cached files re-verified by the background scrub",
            value=p.verified_instances,
        )
        yield CounterMetricFamily(
            "hpacs_scrub_damaged",
            "Damaged cache files the background scrub found (quarantined, repaired or lost)",
            value=p.damaged,
        )
        yield GaugeMetricFamily(
            "hpacs_scrub_last_full_pass_timestamp_seconds",
            "When the scrub last finished verifying the whole cache (0: never)",
            value=p.last_full_pass_at,
        )

    def _routes(self, conn: sqlite3.Connection) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "hpacs_route_queue_jobs",
            "Forwarding jobs in the routing queue, by state (pending, sending, sent, dead)",
            labels=["state"],
        )
        depth = dict.fromkeys(("pending", "sending", "sent", "dead"), 0)
        depth.update(dict(conn.execute("SELECT state, count(*) FROM route_jobs GROUP BY state")))
        for state, n in depth.items():
            g.add_metric([state], n)
        yield g


def active_associations_collector(active: Callable[[], int]) -> Collector:
    return _FuncGauge("hpacs_associations_active", "Associations open right now", active)


class _FuncGauge(Collector):
    def __init__(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        self.name, self.doc, self.fn = name, doc, fn

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.doc, value=self.fn())


def edge_registry(
    index_path: str | Path,
    cache_dir: str | Path,
    active: Callable[[], int],
    *,
    high_watermark: str = "90%",
    low_watermark: str = "75%",
) -> CollectorRegistry:
    """Everything the edge's /metrics shows: DIMSE counters plus index figures."""
    reg = CollectorRegistry(auto_describe=False)
    for m in _DIMSE:
        reg.register(m)
    reg.register(active_associations_collector(active))
    reg.register(IndexCollector(index_path, cache_dir, high_watermark, low_watermark))
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


# ---- cloud API -------------------------------------------------------------------------------
def cloud_registry(catalog_lag_s: Callable[[], float] | None = None) -> CollectorRegistry:
    """The cloud API's registry: HTTP counters and, when given, the catalog lag gauge.

    `catalog_lag_s` returns how far the replica's query index trails the newest catalog
    journal (seconds); the cloud API passes a function reading its own state.
    """
    reg = CollectorRegistry(auto_describe=False)
    reg.register(HTTP_REQUESTS)
    reg.register(HTTP_SECONDS)
    if catalog_lag_s is not None:
        reg.register(
            _FuncGauge(
                "hpacs_catalog_lag_seconds",
                "How far the query index trails the newest catalog journal",
                catalog_lag_s,
            )
        )
    return reg


Handler = Callable[[Any], Awaitable[Any]]


def http_metrics_middleware() -> Any:
    """An aiohttp middleware counting requests by route template and status, with latency.

    Mount it with `web.Application(middlewares=[http_metrics_middleware(), ...])`; the route
    label is the resource's template (`/dicomweb/studies/{study}`), never the raw path, so
    UIDs do not explode the label set.
    """
    from aiohttp import web

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = _route_label(request)
            HTTP_REQUESTS.labels(route, request.method, str(status)).inc()
            HTTP_SECONDS.labels(route, request.method).observe(time.perf_counter() - t0)

    return middleware


def _route_label(request: Any) -> str:
    info = request.match_info
    resource = getattr(getattr(info, "route", None), "resource", None)
    if resource is None:
        return "unmatched"
    canonical = getattr(resource, "canonical", "")
    return str(canonical) or "unmatched"
