"""Feeding a catalog from the bucket: site discovery, listing past each cursor, decoding.

Backend-independent: the same loop feeds a SQLite file or PostgreSQL. Sites are discovered by
listing `catalog/` with a `start_offset` that jumps past each site's prefix (`catalog/<site>0`);
a cursor per site (the last key applied) makes each poll list only newer objects. The next
object is fetched and decoded in a thread while the current ones are applied. A backlog is
applied several objects at a time (up to `GROUP_ROWS` rows per transaction, the cursor moving
with them): the per-transaction costs (statements, commit) are paid once per group.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cloud_api.catalog import Catalog, PollResult
from shared.keys import catalog_prefix
from shared.store.base import ObjectStore

# Rows applied per transaction when a site has a backlog (a few objects of the sync agent's
# 1,000 rows; a STOW's object is one request).
GROUP_ROWS = 10_000


class Poller:
    """One poll at a time per process (the app's loop and a test's explicit poll may meet)."""

    def __init__(self, catalog: Catalog, store: ObjectStore) -> None:
        self.catalog = catalog
        self.store = store
        self._lock = threading.Lock()

    def poll(self) -> PollResult:
        """Apply every catalog object newer than each site's cursor; discovers new sites.
        On PostgreSQL only the replica holding the lead applies (`applied` False elsewhere)."""
        t0 = time.monotonic()
        result = PollResult()
        with self._lock:
            if not self.catalog.try_lead():
                result.applied = False
                return result
            cursors = self.catalog.cursors()
            for site in discover_sites(self.store):
                self._poll_site(site, cursors.get(site, ""), result)
        result.seconds = time.monotonic() - t0
        return result

    def _poll_site(self, site: str, last: str, result: PollResult) -> None:
        keys = [i.key for i in self.store.list(catalog_prefix(site), start_offset=last)]
        keys = [k for k in keys if k > last]
        if not keys:
            return
        group: list[tuple[str | None, list[dict[str, Any]]]] = []
        rows = 0
        with ThreadPoolExecutor(1, thread_name_prefix="catalog-fetch") as pool:
            nxt = pool.submit(fetch_rows, self.store, keys[0])
            for n, key in enumerate(keys):
                group.append((key, nxt.result()))
                rows += len(group[-1][1])
                if n + 1 < len(keys):
                    nxt = pool.submit(fetch_rows, self.store, keys[n + 1])
                if rows >= GROUP_ROWS or n + 1 == len(keys):
                    result.rows += self.catalog.apply_objects(site, group)
                    result.objects += len(group)
                    group, rows = [], 0


def discover_sites(store: ObjectStore) -> Iterator[str]:
    """Sites with a catalog, in order: one short listing per site, jumping past each prefix."""
    offset = "catalog/"
    while True:
        first = next(iter(store.list("catalog/", start_offset=offset)), None)
        if first is None:
            return
        parts = first.key.split("/")
        if len(parts) < 3:
            offset = first.key + "\x00"
            continue
        site = parts[1]
        yield site
        offset = f"catalog/{site}0"  # "0" sorts right after "/": skips catalog/<site>/*


def fetch_rows(store: ObjectStore, key: str) -> list[dict[str, Any]]:
    with store.open(key) as fh:
        return decode_rows(fh.read())


def decode_rows(data: bytes) -> list[dict[str, Any]]:
    """A catalog object's rows as dicts (the `CatalogRow.to_json` form), parsed in one call."""
    text = gzip.decompress(data).decode("utf-8").strip()
    if not text:
        return []
    rows: list[dict[str, Any]] = json.loads(
        "[" + ",".join(line for line in text.split("\n") if line) + "]"
    )
    return rows
