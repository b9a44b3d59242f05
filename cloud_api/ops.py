"""Operations endpoints of the cloud API: /healthz, /readyz (open) and /metrics (admin token).

The probes are open because the kubelet calls them without credentials and they reveal nothing
but "up" and "ready". /metrics goes through the normal guard with the admin need: the API faces
the internet, and route/status counts describe usage; Prometheus scrapes with a bearer token.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cloud_api.auth import Need
from cloud_api.catalog import Catalog
from shared import health, metrics
from shared.keys import catalog_prefix
from shared.store.base import ObjectStore

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
READYZ_TIMEOUT_S = 2.0
REGISTRY = web.AppKey("metrics_registry", metrics.Registry)


@dataclass
class Startup:
    """Whether the replica's catalog is current (it waits for the store to catch up)."""

    store: health.StoreReadiness
    index_built: bool = False
    task: asyncio.Task[None] | None = None

    def check_index(self) -> None:
        if not self.index_built:
            raise RuntimeError(f"not current yet: object store not ready ({self.store.reason})")


STARTUP = web.AppKey("startup", Startup)


def site_lags_s(catalog: Catalog, store: ObjectStore) -> dict[str, float]:
    """Per site, the age of its oldest catalog object the catalog has not applied (0: current).

    The figure an admin watches to know how stale QIDO answers for a site can be."""
    now = time.time()
    lags: dict[str, float] = {}
    for site, cursor in catalog.cursors().items():
        lags[site] = 0.0
        for info in store.list(catalog_prefix(site), start_offset=cursor):
            if info.key <= cursor:
                continue
            lags[site] = max(0.0, now - info.updated) if info.updated else 0.0
            break
    return lags


def catalog_lag_s(catalog: Catalog, store: ObjectStore) -> float:
    """The worst site's lag: the one number the metric exports."""
    return max(site_lags_s(catalog, store).values(), default=0.0)


def mount(app: web.Application, services_key: Any, needs: dict[Any, Any]) -> None:
    """Add the three routes and the metrics registry to the cloud API app."""
    svc = app[services_key]
    app[REGISTRY] = metrics.cloud_registry(lambda: catalog_lag_s(svc.catalog, svc.store))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        def catalog_ready() -> None:
            app[STARTUP].check_index()  # current (start-up caught up with the journals)
            svc.catalog.check_ready()  # and answering (the database or the file)

        checks: dict[str, health.Check] = {
            "catalog": (catalog_ready, ()),
            "store": (health.store_reachable, (svc.store,)),
        }
        ok, body = await health.readiness(checks, READYZ_TIMEOUT_S)
        return web.json_response(body, status=200 if ok else 503)

    async def metrics_view(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.render, request.app[REGISTRY])
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    needs[app.router.add_get("/metrics", metrics_view, allow_head=False)] = (Need.ADMIN, "metrics")
