"""Where an instance's bytes are right now: the cache, or (after eviction) the object store.

Retrieve (C-MOVE, C-GET, routing) asks `ensure_local` for a readable path. Instances in a local
state are served from the cache. Evicted instances need a read-through recall from the object
store; that belongs to the sync side (issue 4), which plugs in by giving the edge server a
`Recaller`. Until one is plugged in, an evicted instance fails its sub-operation with a clear
reason instead of crashing the move.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge.cache import Cache
from shared.errors import NotFound
from shared.lifecycle import LOCAL_STATES, State
from shared.rows import from_row

_RELPATH = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{64}\.dcm")
INSTANCE_COLUMNS = (
    "i.id, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax, i.path, i.state, "
    "i.study_id, i.size, i.crc32c"
)


@dataclass(frozen=True)
class InstanceRef:
    """The index columns retrieve needs about one instance."""

    id: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str
    state: str
    study_id: int
    size: int
    crc32c: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> InstanceRef:
        return from_row(cls, row)


class Recaller(Protocol):
    """Brings an evicted instance back into the cache (read-through from the object store).

    Implemented by the sync side and handed to `EdgeServer.recaller`. It must verify the
    downloaded bytes, move the row through `recalling` to a local state, and return the cache
    path; on failure it raises a PacsError (e.g. TransientStoreError) that the caller reports
    as one failed sub-operation.
    """

    def recall(self, ref: InstanceRef) -> Path: ...


def ensure_local(cache: Cache, ref: InstanceRef, recaller: Recaller | None) -> Path:
    """A readable cache path for `ref`, recalling it when evicted and a recaller is plugged in."""
    state = State(ref.state)
    if state in LOCAL_STATES:
        # Index paths are ours (keys.cache_relpath); the shape check replaces a resolve() per file.
        path = cache.root / ref.path if _RELPATH.fullmatch(ref.path) else cache.path(ref.path)
        if not path.is_file():
            raise NotFound(
                f"{ref.sop_instance_uid}: state {state} but the cache file is missing",
                hint="run `hpacs-edge` start-up reconcile; the file was removed outside hpacs",
            )
        return path
    if recaller is None:
        raise NotFound(
            f"{ref.sop_instance_uid}: state {state} and read-through recall is not configured",
            hint="start the sync agent's recall support, or prefetch the study",
        )
    return recaller.recall(ref)
