"""Legal holds mirrored onto the bucket's objects, where the store keeps holds.

The index's holds (shared/deletion.py) are what hpacs obeys: a held study is never deleted or
purged by hpacs. This pass adds the bucket's own refusal on top, so nothing else deleting
objects (a lifecycle rule, a person with bucket rights) removes held bytes either: GCS
temporary holds (shared/store/gcs.py), a marker on file:// (shared/store/filestore.py).

Per hold, `bucket` says how far it went: `held` (every covered object held as of `bucket_at`,
the newest `synced_at` seen: objects uploaded later are held on the next pass), `unsupported`
(the store accepted the request but keeps no holds: a GCS emulator), `released` (a released
hold's objects are freed unless another hold in force still covers them).
"""

from __future__ import annotations

import logging
import sqlite3

from shared.errors import NotFound, PacsError
from shared.index import Database
from shared.store import ObjectStore

log = logging.getLogger("hpacs.sync.holds")

_COVERED = (
    "SELECT i.object_key, i.synced_at FROM instances i JOIN studies s ON s.id = i.study_id "
    "WHERE i.object_key <> '' AND i.state <> 'purged' AND "
    "((? = 'study' AND s.study_uid = ?) OR (? = 'patient' AND s.patient_id = ?))"
)
_STILL_HELD = (
    "SELECT 1 FROM instances i JOIN studies s ON s.id = i.study_id JOIN holds h ON "
    "h.released_at IS NULL AND ((h.kind = 'study' AND h.value = s.study_uid) OR "
    "(h.kind = 'patient' AND h.value = s.patient_id AND s.patient_id <> '')) "
    "WHERE i.object_key = ?"
)


def sync_holds(db: Database, store: ObjectStore) -> int:
    """One pass; returns how many objects had their hold set or lifted."""
    n = 0
    conn = db.reader()
    for h in conn.execute(
        "SELECT id, kind, value, bucket, bucket_at FROM holds WHERE released_at IS NULL"
    ).fetchall():
        n += _hold(db, store, conn, h)
    for h in conn.execute(
        "SELECT id, kind, value FROM holds WHERE released_at IS NOT NULL AND bucket <> 'released'"
    ).fetchall():
        n += _release(db, store, conn, h)
    return n


def _hold(db: Database, store: ObjectStore, conn: sqlite3.Connection, h: sqlite3.Row) -> int:
    args = (h["kind"], h["value"], h["kind"], h["value"])
    rows = conn.execute(_COVERED + " AND coalesce(i.synced_at, 0) > ?", (*args, h["bucket_at"]))
    keys = [(r[0], float(r[1] or 0)) for r in rows]
    if not keys and h["bucket"] != "pending":
        return 0
    honoured, newest = True, float(h["bucket_at"])
    for key, synced_at in keys:
        try:
            honoured &= store.set_hold(key, True)
        except NotFound:
            continue
        newest = max(newest, synced_at)
    state = "held" if honoured else "unsupported"
    with db.write() as w:
        w.execute(
            "UPDATE holds SET bucket = ?, bucket_at = ? WHERE id = ?", (state, newest, h["id"])
        )
    if not honoured and h["bucket"] != "unsupported":
        log.warning(
            "the object store keeps no holds hold_id=%d store=%s: hpacs itself still never "
            "deletes or purges the held instances",
            h["id"],
            store.url,
        )
    return len(keys)


def _release(db: Database, store: ObjectStore, conn: sqlite3.Connection, h: sqlite3.Row) -> int:
    n = 0
    args = (h["kind"], h["value"], h["kind"], h["value"])
    for r in conn.execute(_COVERED, args).fetchall():
        if conn.execute(_STILL_HELD, (r[0],)).fetchone():
            continue
        try:
            store.set_hold(r[0], False)
            n += 1
        except NotFound:
            pass
        except PacsError as exc:
            log.warning("hold not lifted key=%s error=%s: next pass", r[0], exc)
            return n
    with db.write() as w:
        w.execute("UPDATE holds SET bucket = 'released' WHERE id = ?", (h["id"],))
    return n
