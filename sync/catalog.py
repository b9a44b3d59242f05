"""The catalog journal writer: verified rows appended to `catalog/<site>/<seq>.jsonl.gz`.

A row is journalled once it has a verified object (`synced`, and later states, or `conflict`
with its conflict key), and again when it is deleted (a tombstone), undeleted or purged (a purge
tombstone): those set `catalog_seq` back to 0. `instances.catalog_seq` records which object
holds it, so a crash
between an upload and its journal entry only delays the entry. Objects are create-only and
never rewritten; `shared.journal.Journal` appends them (create-only, crc32c verified, next number
on a conflict), listing from the `sync.catalog_next_seq` setting, so a restart (or a lost index)
continues the sequence. A crash after the put and before the index commit journals those rows
again in the next object: readers take the last row per SOP Instance UID.
"""

from __future__ import annotations

import logging
import time

from shared.catalog import encode_batch
from shared.index import Database
from shared.journal import Journal
from shared.lifecycle import State
from shared.store import ObjectStore
from sync import rows

log = logging.getLogger("hpacs.sync.catalog")

SEQ_SETTING = "sync.catalog_next_seq"
JOURNALLED = (
    State.SYNCED,
    State.EVICTING,
    State.EVICTED,
    State.RECALLING,
    State.CONFLICT,
    State.DELETED,  # tombstones (shared/deletion.py); rows never uploaded have no object key
    State.PURGING,  # purge tombstones, journalled before the objects go (sync/purge.py)
)
_STATES_SQL = ",".join(f"'{s.value}'" for s in JOURNALLED)
PENDING_WHERE = f"i.catalog_seq = 0 AND i.object_key != '' AND i.state IN ({_STATES_SQL})"


def pending_count(db: Database) -> int:
    """Verified rows not yet in the journal."""
    sql = f"SELECT count(*) FROM instances i WHERE {PENDING_WHERE}"
    return int(db.reader().execute(sql).fetchone()[0])


class CatalogWriter:
    def __init__(self, db: Database, store: ObjectStore, site: str, batch: int) -> None:
        self.db = db
        self.store = store
        self.site = site
        self.batch = batch
        self._journal: Journal | None = None
        self.last_flush_at = time.monotonic()

    def pending(self) -> int:
        return pending_count(self.db)

    def journal(self) -> Journal:
        if self._journal is None:
            known = int(self.db.get_setting(SEQ_SETTING, "1") or 1)
            self._journal = Journal(self.store, self.site, start=known)
        return self._journal

    def next_sequence(self) -> int:
        """Continue after the last journal object, whether the index or the bucket knows it."""
        return self.journal().next_sequence()

    def flush(self) -> int:
        """Journal every pending row, `batch` rows per object; returns how many were written."""
        written = 0
        while True:
            found = (
                self.db.reader()
                .execute(
                    rows.SELECT + f" WHERE {PENDING_WHERE} ORDER BY i.id LIMIT ?", (self.batch,)
                )
                .fetchall()
            )
            if not found:
                break
            data = encode_batch([rows.catalog_row(r, self.site) for r in found])
            seq, key = self.journal().append(data)
            with self.db.write() as conn:
                # only rows still in the state journalled: one deleted or undeleted meanwhile
                # keeps catalog_seq 0 and goes into the next object with its new state
                by_state: dict[str, list[int]] = {}
                for r in found:
                    by_state.setdefault(r["state"], []).append(r["id"])
                for state, ids in by_state.items():
                    for i in range(0, len(ids), 500):
                        chunk = ids[i : i + 500]
                        conn.execute(
                            "UPDATE instances SET catalog_seq = ? WHERE catalog_seq = 0 AND "
                            f"state = ? AND id IN ({','.join('?' * len(chunk))})",
                            [seq, state, *chunk],
                        )
                self.db.set_setting(conn, SEQ_SETTING, str(seq + 1))
            written += len(found)
            log.info("catalog appended key=%s rows=%d", key, len(found))
            if len(found) < self.batch:
                break
        self.last_flush_at = time.monotonic()
        return written
