"""Restore requests from the cloud API: poll `control/<site>/restores/`, do them, report progress.

The contract is shared/restore.py. A request is taken when it has no status object beside it,
or its status is not terminal and has not moved for `STALE_S` (the agent doing it died). Phases:
indexing (sync/restore.py: the catalog journal into the index, all `evicted`), config (the node
registry from the newest `config/<site>/…/nodes.json`), prefetching (studies received within
`prefetch_days` recalled into the cache through shared/recall.py), done or failed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

from shared import control
from shared.config import Config
from shared.errors import PacsError
from shared.index import Database
from shared.keys import RESTORES, config_prefix
from shared.lifecycle import State
from shared.recall import Recaller
from shared.registry import Node, upsert_node
from shared.restore import RestorePhase, RestoreRequest, RestoreStatus
from shared.store import ObjectStore
from sync.restore import restore_index

log = logging.getLogger("hpacs.sync.restore")

STALE_S = 600.0


def poll_restores(cfg: Config, db: Database, store: ObjectStore) -> int:
    """Run every pending restore request of this site; returns how many were run."""
    site = cfg.sync.site
    done = 0
    for req, _ in control.requests(store, RESTORES, site, RestoreRequest.from_bytes):
        data = control.status(store, RESTORES, site, req.id)  # now: a restore takes long
        if data is not None:
            st = RestoreStatus.from_bytes(data)
            if st.phase.terminal or time.time() - st.updated_at < STALE_S:
                continue
        run_restore(cfg, db, store, req)
        done += 1
    return done


def run_restore(
    cfg: Config, db: Database, store: ObjectStore, req: RestoreRequest
) -> RestoreStatus:
    site = cfg.sync.site
    now = time.time()
    st = RestoreStatus(
        id=req.id,
        site=req.site,
        phase=RestorePhase.INDEXING,
        updated_at=now,
        started_at=now,
        agent=f"{socket.gethostname()}:{os.getpid()}",
    )

    def report(**changes: object) -> RestoreStatus:
        nonlocal st
        st = replace(st, updated_at=time.time(), **changes)  # type: ignore[arg-type]
        control.put_status(store, RESTORES, site, req.id, st.to_bytes())
        return st

    log.info("restore started id=%s site=%s", req.id, req.site)
    try:
        report()
        rep = restore_index(db, store, req.site)
        report(phase=RestorePhase.CONFIG, instances_indexed=rep.indexed + rep.already)
        nodes = restore_nodes(db, store, req.site)
        days = req.prefetch_days if req.prefetch_days is not None else cfg.restore.prefetch_days
        studies = recent_studies(db, days)
        total = db.reader().execute("SELECT count(*) FROM studies").fetchone()[0]
        report(
            phase=RestorePhase.PREFETCHING,
            studies_total=int(total),
            studies_to_prefetch=len(studies),
            details={"nodes_restored": nodes},
        )
        recaller = Recaller(
            db,
            Path(cfg.edge.cache_dir),
            store,
            concurrency=cfg.sync.recall_concurrency,
        )
        try:
            fetched = 0
            for n, study_id in enumerate(studies, start=1):
                ids = [
                    r[0]
                    for r in db.reader().execute(
                        "SELECT id FROM instances WHERE study_id = ? AND state = ?",
                        (study_id, State.EVICTED.value),
                    )
                ]
                fetched += len(recaller.recall_many(ids))
                report(studies_prefetched=n, instances_prefetched=fetched)
        finally:
            recaller.close()
        st = report(phase=RestorePhase.DONE)
        log.info("restore done id=%s instances=%d", req.id, st.instances_indexed)
    except Exception as exc:
        log.error("restore failed id=%s error=%s", req.id, exc)
        try:
            st = report(phase=RestorePhase.FAILED, error=f"{type(exc).__name__}: {exc}"[:500])
        except PacsError:
            pass
    return st


def recent_studies(db: Database, days: int) -> list[int]:
    """Studies with an instance received in the last `days` days, newest first."""
    if days <= 0:
        return []
    since = time.time() - days * 86400
    rows = db.reader().execute(
        "SELECT study_id, max(received_at) AS latest FROM instances GROUP BY study_id "
        "HAVING latest >= ? ORDER BY latest DESC",
        (since,),
    )
    return [int(r[0]) for r in rows]


def restore_nodes(db: Database, store: ObjectStore, site: str) -> int:
    """The node registry from the newest backup of the site (sync/backup.py); returns count."""
    backups = [i.key for i in store.list(config_prefix(site)) if i.key.endswith("/nodes.json")]
    if not backups:
        return 0
    with store.open(max(backups)) as fh:
        doc = json.loads(fh.read())
    n = 0
    with db.write() as conn:
        for d in doc.get("nodes", []):
            upsert_node(
                conn,
                Node(
                    ae_title=d["ae_title"],
                    host=d["host"],
                    port=int(d["port"]),
                    tls=bool(d.get("tls", False)),
                    permissions=frozenset(d.get("permissions", [])),
                    max_associations=int(d.get("max_associations", 0)),
                    source="restore",
                ),
            )
            n += 1
    return n
