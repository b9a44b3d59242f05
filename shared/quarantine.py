"""What happens to a cached file whose bytes fail their crc32c: quarantined, never deleted.

Every reader that can find damage (the edge's retrieve, routing and commitment through
`edge/locate.py`, the sync agent's uploader and scrub) hands it here, so the policy is one:

- the row moves first, by compare-and-set inside the caller's write transaction, and the file
  moves to `<cache>/quarantine/` (with a `.reason` file beside it) in that same transaction, so
  no other reader can be handed the damaged bytes as "the instance" once the row has changed;
- a row that vouches for a verified cloud copy of exactly its bytes (`synced`, or `evicting`
  whose eviction is cancelled here) goes `-> recalling` and the copy is fetched back through
  the one recall path (`shared/recall.py`: temp file, crc32c, fsync, rename, `-> synced`);
- any other row (damaged before it was uploaded) goes `-> lost`: there is no intact copy left,
  and the line in the log says how to get one (send the study again, which revives the row).

One WARNING (repaired) or ERROR (lost) line and one `events` row per damaged file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from shared.errors import NotFound
from shared.fsutil import fsync_dir
from shared.index import Database
from shared.lifecycle import LOCAL_STATES, State, transition
from shared.rows import from_row

log = logging.getLogger("hpacs.integrity")

QUARANTINE_DIR = "quarantine"
EVENT_KIND = "cache_damaged"
LOST_ADVICE = (
    "send the study again from the modality (the instance comes back as cached) or put the "
    "object back into the bucket from another copy and run `hpacs-sync retry-lost`; "
    "`hpacs-sync status` lists lost instances"
)


class Refetcher(Protocol):
    """Fetches the verified cloud copy of a row this module moved to `recalling`
    (`shared.recall.Recaller.fetch_claimed`); raises a PacsError when it cannot."""

    def fetch_claimed(self, instance_id: int) -> Path: ...


@dataclass(frozen=True)
class Damaged:
    """The index columns the policy needs about one instance."""

    id: int
    sop_instance_uid: str
    state: str
    path: str
    size: int
    crc32c: str
    object_key: str


_COLUMNS = "id, sop_instance_uid, state, path, size, crc32c, object_key"


def load(conn: sqlite3.Connection, instance_id: int) -> Damaged | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM instances WHERE id = ?", (instance_id,)).fetchone()
    return None if row is None else from_row(Damaged, row)


def quarantine(
    conn: sqlite3.Connection,
    cache_root: Path,
    row: Damaged,
    dst: State,
    detail: str,
    detected_by: str,
) -> Path | None:
    """Inside the caller's transaction: `row.state -> dst`, the file into quarantine with a
    reason file, one events row. Returns where the file went; None when another actor changed
    the row first (nothing moved). A file already gone is recorded as such."""
    note = f"damaged in the cache ({detected_by}): {detail}"[:500]
    if not transition(conn, row.id, State(row.state), dst, last_error=note):
        return None
    now = time.time()
    src = cache_root / row.path
    qdir = cache_root / QUARANTINE_DIR
    qdir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    target = qdir / f"{stamp}-{Path(row.path).name}"
    n = 1
    while target.exists():  # the same file damaged again within a second: keep both
        n += 1
        target = qdir / f"{stamp}.{n}-{Path(row.path).name}"
    reason = [
        f"sop_instance_uid: {row.sop_instance_uid}",
        f"cache_path: {row.path}",
        f"expected_size: {row.size}",
        f"expected_crc32c: {row.crc32c}",
        f"detected_by: {detected_by}",
        f"detail: {detail}",
        f"quarantined_at: {stamp}Z",
        f"state: {row.state} -> {dst.value}",
        "next: "
        + (
            f"the verified cloud copy ({row.object_key}) is fetched back into the cache"
            if dst is State.RECALLING
            else f"no verified cloud copy: the instance is lost; {LOST_ADVICE}"
        ),
    ]
    target.with_suffix(".reason").write_text("\n".join(reason) + "\n")
    try:
        os.replace(src, target)
        fsync_dir(qdir)
    except FileNotFoundError:
        detail += " (the file was already gone)"
    conn.execute(
        "INSERT INTO events(at, kind, calling_ae, peer, detail) VALUES (?,?,?,?,?)",
        (
            now,
            EVENT_KIND,
            "",
            "",
            f"sop_instance_uid={row.sop_instance_uid} detected_by={detected_by} "
            f"quarantine={target.relative_to(cache_root)} next="
            f"{'refetch' if dst is State.RECALLING else 'lost'} detail={detail}"[:1000],
        ),
    )
    return target


def handle_damage(
    db: Database,
    cache_root: Path,
    instance_id: int,
    expected: tuple[int, str],
    detail: str,
    detected_by: str,
    refetch: Refetcher | None,
) -> Path | None:
    """Quarantine a damaged cache file and put its verified cloud copy in its place.

    `expected` is the (size, crc32c) the reader checked against: a row that meanwhile holds
    other bytes (replaced) or is no longer local (evicted, being repaired by another actor)
    is left alone and None comes back, so the caller reads the row again. Returns the path of
    the intact file; raises NotFound when the instance is lost, or the recall's error.
    """
    with db.write() as conn:
        moved = _move(conn, cache_root, instance_id, expected, detail, detected_by)
        if moved is None:
            return None
        row, where = moved
        repair = row.state == State.SYNCED.value
        if repair and refetch is None:
            # nothing here can download: the cloud copy stays the instance's bytes
            transition(conn, row.id, State.RECALLING, State.EVICTED)
    _report(row, where.relative_to(cache_root), detail, detected_by, repair, refetch)
    if not repair:
        raise NotFound(
            f"{row.sop_instance_uid}: the cache file was damaged and no verified cloud copy "
            "exists (quarantined; instance lost)",
            hint=LOST_ADVICE,
        )
    if refetch is None:
        raise NotFound(
            f"{row.sop_instance_uid}: the cache file was damaged (quarantined); its verified "
            "cloud copy is recalled on the next retrieve",
            hint="configure the object store (sync.store_url) for this process",
        )
    return refetch.fetch_claimed(row.id)


def _move(
    conn: sqlite3.Connection,
    cache_root: Path,
    instance_id: int,
    expected: tuple[int, str],
    detail: str,
    detected_by: str,
) -> tuple[Damaged, Path] | None:
    """The decision and the move, in the caller's transaction; None: the row changed."""
    row = load(conn, instance_id)
    if row is None or (row.size, row.crc32c) != expected:
        return None
    state = State(row.state)
    if state is State.EVICTING and transition(conn, row.id, state, State.SYNCED):
        state = State.SYNCED  # cancelled: the evictor re-checks the state before unlinking
    if state not in LOCAL_STATES:
        return None
    row = replace(row, state=state.value)
    dst = State.RECALLING if state is State.SYNCED else State.LOST
    where = quarantine(conn, cache_root, row, dst, detail, detected_by)
    return None if where is None else (row, where)


def _report(
    row: Damaged,
    where: Path,
    detail: str,
    detected_by: str,
    repair: bool,
    refetch: Refetcher | None,
) -> None:
    if not repair:
        report_lost(row, where, detail, detected_by)
        return
    log.warning(
        "damaged cache file quarantined sop_instance_uid=%s path=%s quarantine=%s "
        "detected_by=%s detail=%s: %s",
        row.sop_instance_uid,
        row.path,
        where,
        detected_by,
        detail,
        f"fetching the verified cloud copy object_key={row.object_key}"
        if refetch is not None
        else "left evicted; the next retrieve recalls the verified cloud copy",
    )


def report_lost(row: Damaged, where: Path, detail: str, detected_by: str) -> None:
    """The one line for a damaged file without a cloud copy (after `quarantine(..., LOST)`)."""
    log.error(
        "damaged cache file quarantined sop_instance_uid=%s path=%s quarantine=%s "
        "detected_by=%s detail=%s: no verified cloud copy, the instance is lost; %s",
        row.sop_instance_uid,
        row.path,
        where,
        detected_by,
        detail,
        LOST_ADVICE,
    )
