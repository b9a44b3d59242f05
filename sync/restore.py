"""Rebuild an edge index from the bucket alone (invariant 5): the catalog journal of a site.

Every journalled instance comes back as an `evicted` row with all its query attributes and its
object key, so C-FIND finds it at once and a retrieve recalls it on demand. Rows already in the
index are left alone; a later journal row for the same instance wins over an earlier one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from shared.catalog import CatalogRow, decode_batch
from shared.index import Database
from shared.keys import cache_relpath, catalog_prefix, catalog_sequence
from shared.lifecycle import State
from shared.rows import Origin, index_instance
from shared.store import ObjectStore

log = logging.getLogger("hpacs.sync.restore")


@dataclass
class RestoreReport:
    objects: int = 0
    rows: int = 0
    indexed: int = 0
    already: int = 0


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
    with db.write() as conn:
        for uid, (seq, row) in latest.items():
            if row.deleted:
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
            rep.indexed += 1
    log.info(
        "index restored site=%s objects=%d rows=%d indexed=%d already=%d",
        site,
        rep.objects,
        rep.rows,
        rep.indexed,
        rep.already,
    )
    return rep
