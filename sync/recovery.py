"""Start-up recovery of rows a killed agent left mid-flight (invariant 4, sync side).

`uploading -> cached` (shared.lifecycle.RECOVERY): the upload is simply retried; a copy that did
land is recognised by its crc32c. `evicting` goes back to `synced` when the file is still there
and on to `evicted` when the crash came after the unlink (the cloud copy was verified before
any file was deleted). `recalling` belongs to the edge process, which resets it at its own
start-up (edge/reconcile.py); the agent leaves it alone so it cannot break a live recall.
`purging` is never rolled back (shared.lifecycle `PURGE_RESUMED`): the purge's first pass
finishes those rows (sync/purge.py); recovery counts them for the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from shared.index import Database
from shared.lifecycle import RECOVERY, State, transition

log = logging.getLogger("hpacs.sync.recovery")


@dataclass
class RecoveryReport:
    uploads_reset: int = 0
    evictions_undone: int = 0
    evictions_completed: int = 0
    purges_to_finish: int = 0


def recover(db: Database, cache_dir: Path) -> RecoveryReport:
    rep = RecoveryReport()
    with db.write() as conn:
        for r in conn.execute(
            "SELECT id FROM instances WHERE state = ?", (State.UPLOADING.value,)
        ).fetchall():
            rep.uploads_reset += transition(
                conn, r["id"], State.UPLOADING, RECOVERY[State.UPLOADING]
            )
        for r in conn.execute(
            "SELECT id, path FROM instances WHERE state = ?", (State.EVICTING.value,)
        ).fetchall():
            if (cache_dir / r["path"]).is_file():
                rep.evictions_undone += transition(
                    conn, r["id"], State.EVICTING, RECOVERY[State.EVICTING]
                )
            else:
                rep.evictions_completed += transition(conn, r["id"], State.EVICTING, State.EVICTED)
        rep.purges_to_finish = conn.execute(
            "SELECT count(*) FROM instances WHERE state = ?", (State.PURGING.value,)
        ).fetchone()[0]
    log.info(
        "recovered uploads_reset=%d evictions_undone=%d evictions_completed=%d purges_to_finish=%d",
        rep.uploads_reset,
        rep.evictions_undone,
        rep.evictions_completed,
        rep.purges_to_finish,
    )
    return rep
