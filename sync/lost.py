"""`hpacs-sync retry-lost`: fetch lost instances again once their object is back in the bucket.

A row is `lost` when neither the cache nor the object store holds intact bytes (the recall got
NotFound, or a damaged cache file had no verified cloud copy). An admin who restored the
object from another copy (`lost -> recalling`, then the one recall path) gets it back here;
rows that never reached the store have no object key and can only be sent again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from shared.errors import PacsError
from shared.index import Database
from shared.lifecycle import State, transition
from shared.recall import Recaller
from shared.store import ObjectStore

log = logging.getLogger("hpacs.sync.lost")


@dataclass
class RetryReport:
    recalled: int = 0
    still_lost: int = 0  # the store still has no object (or a failure: see the log)
    never_uploaded: int = 0  # no object key: only sending the instance again helps


def retry_lost(db: Database, cache_dir: Path, store: ObjectStore) -> RetryReport:
    rep = RetryReport()
    rows = db.reader().execute(
        "SELECT id, object_key FROM instances WHERE state = ? ORDER BY id", (State.LOST.value,)
    )
    ids = []
    for iid, key in rows.fetchall():
        if key:
            ids.append(int(iid))
        else:
            rep.never_uploaded += 1
    recaller = Recaller(db, cache_dir, store, concurrency=1)
    try:
        for iid in ids:
            with db.write() as conn:
                if not transition(conn, iid, State.LOST, State.RECALLING):
                    continue  # sent again meanwhile
            try:
                recaller.fetch_claimed(iid)
                rep.recalled += 1
            except PacsError:  # lost again or evicted: the recall path logged why
                rep.still_lost += 1
    finally:
        recaller.close()
    return rep
