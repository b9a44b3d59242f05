"""Rebuild an edge index from the bucket alone (invariant 5): the catalog journal of a site.

Every journalled instance comes back as an `evicted` row with all its query attributes and its
object key, so C-FIND finds it at once and a retrieve recalls it on demand. Rows already in the
index are left alone; a later journal row for the same instance wins over an earlier one. A
deletion's tombstone (within its grace) brings the instance back `deleted`, hidden, with its
`deleted_at`: an undelete still works and the purge comes when it would have; a purge's
tombstone leaves it out: the restored index answers as the lost one did.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from shared.catalog import CatalogRow, decode_batch
from shared.index import Database
from shared.keys import cache_relpath, catalog_prefix, catalog_sequence
from shared.lifecycle import State, transition
from shared.rows import Origin, index_instance, recount
from shared.store import ObjectStore

log = logging.getLogger("hpacs.sync.restore")


@dataclass
class RestoreReport:
    objects: int = 0
    rows: int = 0
    indexed: int = 0
    already: int = 0
    deleted: int = 0  # restored within their deletion's grace: hidden, undeletable


def restore_index(db: Database, store: ObjectStore, site: str) -> RestoreReport:
    rep = RestoreReport()
    latest: dict[str, tuple[int, CatalogRow]] = {}
    for info in store.list(catalog_prefix(site)):
        seq = catalog_sequence(info.key)
        with store.open(info.key) as fh:
            batch = decode_batch(fh.read())
        rep.objects += 1
        for row in batch:
            rep.rows += 1
            latest[row.header.sop_instance_uid] = (seq, row)
    now = time.time()
    hidden: dict[int, set[int]] = {}  # study id -> series ids with a restored deleted row
    with db.write() as conn:
        for uid, (seq, row) in latest.items():
            if row.purged:
                continue
            if conn.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (uid,)
            ).fetchone():
                rep.already += 1
                continue
            iid = index_instance(
                conn,
                row.header,
                cache_relpath(uid),
                row.size,
                row.crc32c,
                Origin("restore", calling_ae=row.calling_ae),
                now,
                state=State.EVICTED,
            )
            conn.execute(
                "UPDATE instances SET object_key = ?, synced_at = ?, catalog_seq = ?, "
                "received_at = ? WHERE id = ?",
                (row.object_key, now, seq, row.received_at, iid),
            )
            if row.deleted:
                transition(
                    conn,
                    iid,
                    State.EVICTED,
                    State.DELETED,
                    deleted_at=row.deleted_at or now,
                    deleted_from=State.EVICTED.value,
                )
                study_id, series_id = conn.execute(
                    "SELECT study_id, series_id FROM instances WHERE id = ?", (iid,)
                ).fetchone()
                hidden.setdefault(study_id, set()).add(series_id)
                rep.deleted += 1
            rep.indexed += 1
        for study_id, series in hidden.items():
            recount(conn, [study_id], sorted(series))
    log.info(
        "index restored site=%s objects=%d rows=%d indexed=%d already=%d deleted=%d",
        site,
        rep.objects,
        rep.rows,
        rep.indexed,
        rep.already,
        rep.deleted,
    )
    return rep
