"""Read models for the web console: what an admin sees, as plain dicts from the index.

Kept apart from `edge/http.py` so the HTTP adapter only parses, calls one of these and renders
JSON. The console shows no patient names, IDs or birth dates: accession number, date, modality
and description identify a study well enough for operations, and keep PHI off admin screens
that are often shared or screenshotted.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from typing import Any

from edge import routequeue
from edge.troubleshoot import last_errors
from shared.errors import NotFound
from shared.eviction import parse_watermark
from shared.expiry import ACTIVE_HOLD_SQL
from shared.index import Database
from shared.lifecycle import HIDDEN_STATES, LOCAL_STATES, State

SYNCED_STATES = frozenset({State.SYNCED, State.EVICTING, State.EVICTED, State.RECALLING})


def study_state(counts: Mapping[str, int]) -> tuple[str, str]:
    """(cache state, sync state) of a study from its instances' state counts.

    cache: local (every instance in the cache), partial, evicted (none local).
    sync: synced, pending (some not yet uploaded), failed (any failed or conflict).
    """
    total = sum(counts.values())
    local = sum(n for s, n in counts.items() if State(s) in LOCAL_STATES)
    synced = sum(n for s, n in counts.items() if State(s) in SYNCED_STATES)
    bad = counts.get(State.FAILED, 0) + counts.get(State.CONFLICT, 0)
    cache = "local" if local == total else ("evicted" if local == 0 else "partial")
    sync = "failed" if bad else ("synced" if synced == total else "pending")
    return cache, sync


def status(
    db: Database,
    cache_dir: str,
    high: str,
    low: str,
    active: int,
    per_node: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The dashboard: the disk or the cache against the watermarks it is compared with
    (shared/eviction.py: percents with the disk's used bytes, sizes with the cache bytes),
    backlog and its age, associations per node, the recall queue, the last errors."""
    conn = db.reader()
    by_state = {
        r[0]: {"instances": r[1], "bytes": int(r[2])}
        for r in conn.execute(
            "SELECT state, count(*), total(size) FROM instances GROUP BY state"  # index-only
        )
    }
    cache_states = LOCAL_STATES | {State.EVICTING}
    cache_bytes = sum(v["bytes"] for s, v in by_state.items() if State(s) in cache_states)
    backlog = [by_state.get(s, {"instances": 0, "bytes": 0}) for s in ("cached", "uploading")]
    oldest = conn.execute(
        "SELECT min(received_at) FROM instances WHERE state IN ('cached','uploading')"
    ).fetchone()[0]
    recalling = conn.execute(
        "SELECT count(*), min(state_changed_at) FROM instances WHERE state = 'recalling'"
    ).fetchone()
    now = time.time()
    return {
        "disk": disk_usage(cache_dir),
        "cache": {"bytes": cache_bytes},
        "watermarks": watermarks(high, low, disk_usage(cache_dir), cache_bytes),
        "backlog": {
            "instances": sum(b["instances"] for b in backlog),
            "bytes": sum(b["bytes"] for b in backlog),
            "oldest_age_s": round(now - oldest, 1) if oldest else 0.0,
        },
        "states": by_state,
        "associations": {"active": active, "per_node": per_node or {}},
        "recall": {
            "instances": recalling[0],
            "oldest_age_s": round(now - recalling[1], 1) if recalling[1] else 0.0,
        },
        "studies": conn.execute(
            "SELECT count(*) FROM studies WHERE num_instances > 0"  # deleted ones not counted
        ).fetchone()[0],
        "last_errors": last_errors(conn, now),
    }


def disk_usage(path: str) -> dict[str, int]:
    du = shutil.disk_usage(path)
    return {"capacity_bytes": du.total, "used_bytes": du.total - du.free, "free_bytes": du.free}


def watermarks(high: str, low: str, disk: dict[str, int], cache_bytes: int) -> dict[str, Any]:
    """Each watermark with the figure it is compared with, as the evictor does: a percent of
    the disk against the disk's used bytes, a size against the cache bytes."""
    hi, lo = parse_watermark(high), parse_watermark(low)
    basis = "disk" if hi.percent else "cache"
    return {
        "basis": basis,
        "compared_bytes": disk["used_bytes"] if hi.percent else cache_bytes,
        "scale_bytes": disk["capacity_bytes"] if hi.percent else max(hi.bytes_of(0), cache_bytes),
        "high": {"spec": high, "bytes": hi.bytes_of(disk["capacity_bytes"])},
        "low": {"spec": low, "bytes": lo.bytes_of(disk["capacity_bytes"])},
    }


def studies(db: Database, limit: int = 50) -> list[dict[str, Any]]:
    """Most recently received studies with their cache and sync state."""
    conn = db.reader()
    rows = conn.execute(
        "SELECT id, study_uid, study_date, accession_number, study_description, num_series, "
        "num_instances, pinned, updated_at, "
        "(SELECT group_concat(DISTINCT modality) FROM series WHERE study_id = s.id) AS modalities, "
        f"EXISTS ({ACTIVE_HOLD_SQL}) AS held "
        "FROM studies s ORDER BY updated_at DESC LIMIT ?",
        (limit,),
    ).fetchall()
    out = []
    for r in rows:
        counts = {
            s: n
            for s, n in conn.execute(
                "SELECT state, count(*) FROM instances WHERE study_id = ? GROUP BY state",
                (r["id"],),
            )
        }
        shown = {k: n for k, n in counts.items() if State(k) not in HIDDEN_STATES}
        cache, sync = study_state(shown) if shown else ("evicted", "pending")
        out.append(
            {
                "study_uid": r["study_uid"],
                "study_date": r["study_date"],
                "accession_number": r["accession_number"],
                "description": r["study_description"],
                "modalities": r["modalities"] or "",
                "series": r["num_series"],
                "instances": r["num_instances"],
                "pinned": bool(r["pinned"]),
                "cache_state": cache,
                "sync_state": sync,
                "states": counts,
                "updated_at": r["updated_at"],
                # deleted: no visible instance left (undelete within the grace); held: a legal
                # hold covers it (shared/deletion.py)
                "deleted": r["num_instances"] == 0,
                "deleted_instances": sum(counts.get(s, 0) for s in ("deleted", "purging")),
                "purged_instances": counts.get("purged", 0),
                "held": bool(r["held"]),
            }
        )
    return out


def set_pinned(db: Database, study_uid: str, pinned: bool) -> None:
    """Pinned studies are never evicted (the sync agent's eviction reads this column)."""
    with db.write() as conn:
        cur = conn.execute(
            "UPDATE studies SET pinned = ? WHERE study_uid = ?", (int(pinned), study_uid)
        )
        if cur.rowcount != 1:
            raise NotFound(f"no study {study_uid}")


def events(db: Database, kind: str = "association_rejected", limit: int = 100) -> list[dict]:
    return [
        dict(r)
        for r in db.reader().execute(
            "SELECT id, at, kind, calling_ae, peer, detail FROM events WHERE kind = ? "
            "ORDER BY at DESC, id DESC LIMIT ?",
            (kind, limit),
        )
    ]


def route_queue(db: Database, limit: int = 100) -> dict[str, Any]:
    """The routing queue: counts per route, destination and state, and the dead letters."""
    conn = db.reader()
    return {
        "summary": [
            {k: r[k] for k in ("route", "destination", "state", "oldest")} | {"jobs": r["n"]}
            for r in routequeue.summary(conn)
        ],
        "dead": [dict(r) for r in routequeue.dead_jobs(conn, limit)],
        "depth": routequeue.queue_depth(conn),
    }


def retry_routes(db: Database, ids: list[int] | None = None) -> int:
    """Requeue dead forwarding jobs (all, or the given ids) through the queue's own retry."""
    with db.write() as conn:
        return routequeue.retry(conn, ids=ids, now=time.time())
