"""Operational events for the dashboard's "last errors" (table `events`): refused stores,
failed commitments, rejected associations.

A modality sending a 2,000-image study to an edge that refuses it would otherwise write 2,000
rows (and 2,000 WAL fsyncs) in a minute: `record` writes at most one row per kind, calling AE
and peer address every `EVERY_S` seconds in this process, which is all the dashboard needs to
show the problem and its fix. A failure to record never fails the DIMSE operation.
"""

from __future__ import annotations

import logging
import threading
import time

from shared.index import Database

log = logging.getLogger("hpacs.edge.events")

EVERY_S = 60.0
STORE_REFUSED = "store_refused"
COMMITMENT_FAILED = "commitment_failed"

_last: dict[tuple[str, str, str], float] = {}
_lock = threading.Lock()


def record(db: Database, kind: str, calling_ae: str, peer: str, detail: str) -> bool:
    """Insert one events row unless the same (kind, AE, peer) was recorded within EVERY_S;
    True when a row was written."""
    key = (kind, calling_ae, peer)
    now = time.time()
    with _lock:
        if now - _last.get(key, 0.0) < EVERY_S:
            return False
        _last[key] = now
        if len(_last) > 10_000:  # bounded: forget the oldest keys
            for k in sorted(_last, key=_last.__getitem__)[:1000]:
                del _last[k]
    try:
        with db.write() as conn:
            conn.execute(
                "INSERT INTO events(at, kind, calling_ae, peer, detail) VALUES (?,?,?,?,?)",
                (now, kind, calling_ae, peer, detail[:500]),
            )
    except Exception:  # the DIMSE answer matters more than its dashboard row
        log.exception("could not record event kind=%s", kind)
        return False
    return True


def forget() -> None:
    """Tests: start from no recent rows."""
    with _lock:
        _last.clear()
