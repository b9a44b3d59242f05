"""Start-up reconciliation of the cache against the index (invariant 4, edge side).

Temp files are removed; files without rows are re-indexed (a crash between the link and the
index commit, before any success was sent); a file without a row whose instance's row points at
another file is the loser of an interrupted replace (edge/ingest.py) and is removed; rows whose
file is missing are reported loudly; rows left in `recalling` by a crash go back to `evicted`
(the recall never finished). A correction interrupted by a crash leaves at most one such
loser file per instance (the same rule removes it) and a marker reported here.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from edge.cache import Cache
from edge.corrections import pending
from shared.checksum import crc32c_file
from shared.dicom import read_header
from shared.errors import PacsError
from shared.index import Database
from shared.lifecycle import LOCAL_STATES, RECOVERY, State, transition
from shared.quarantine import QUARANTINE_DIR
from shared.rows import Origin, index_instance

log = logging.getLogger("hpacs.edge.reconcile")


@dataclass
class ReconcileReport:
    temp_removed: int = 0
    reindexed: int = 0
    unreadable: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    recalls_reset: int = 0
    replace_leftovers: int = 0
    corrections_unfinished: list[str] = field(default_factory=list)  # study UIDs


# Rows in these states have no cache file (the bytes are in the bucket, or nowhere). At scale
# they are nearly the whole index (10 M instances, a cache of a few hundred thousand): reading
# them into memory made start-up take minutes. A file found at such a row's path is looked
# up by its SOP Instance UID in _reindex instead, with the same outcome (left alone).
NO_FILE_STATES = (State.EVICTED.value, State.PURGED.value, State.LOST.value)


def reconcile(db: Database, cache: Cache) -> ReconcileReport:
    rep = ReconcileReport(temp_removed=cache.clear_temp())
    states = tuple(s.value for s in State if s.value not in NO_FILE_STATES)
    marks = ",".join("?" * len(states))
    rows = {
        r[0]: (r[1], r[2])
        for r in db.reader().execute(
            # the state index (instances_state) walks only the rows that may have a file
            f"SELECT path, sop_instance_uid, state FROM instances WHERE state IN ({marks})",
            states,
        )
    }
    on_disk: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(cache.root):
        if dirpath == str(cache.root):
            dirnames[:] = [d for d in dirnames if d not in ("tmp", "lost+found", QUARANTINE_DIR)]
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), cache.root)
            on_disk.add(rel)
            if rel not in rows and name.endswith(".dcm"):
                _reindex(db, cache, rel, rep)
    rep.missing_files = _still_missing(
        db,
        cache,
        [(uid, rel) for rel, (uid, state) in rows.items() if State(state) in LOCAL_STATES],
        on_disk,
    )
    rep.recalls_reset = _reset_recalls(db)
    rep.corrections_unfinished = _unfinished_corrections(db)
    if rep.missing_files:
        log.error(
            "index rows without their file count=%d first=%s: the cache was altered outside "
            "hpacs; put the same files back with `hpacs-edge import PATH` (from the modality, "
            "a backup, or for synced instances their verified copy under instances/ in the "
            "bucket): identical bytes restore the cache file",
            len(rep.missing_files),
            rep.missing_files[:5],
        )
    log.info(
        "reconciled temp_removed=%d reindexed=%d unreadable=%d missing_files=%d recalls_reset=%d "
        "replace_leftovers=%d corrections_unfinished=%d",
        rep.temp_removed,
        rep.reindexed,
        len(rep.unreadable),
        len(rep.missing_files),
        rep.recalls_reset,
        rep.replace_leftovers,
        len(rep.corrections_unfinished),
    )
    return rep


def _still_missing(
    db: Database, cache: Cache, local: list[tuple[str, str]], on_disk: set[str]
) -> list[str]:
    """SOP UIDs of local rows whose file is missing, each confirmed after the walk.

    The sync agent runs while the edge starts: a study it evicts between our reading of the
    rows and the walk has files gone whose rows were `synced` in our snapshot. An eviction
    commits `evicting` before it unlinks, so checking the file again and only then reading
    the row again shows those rows out of the local states: never reported as missing."""
    out = []
    reader = db.reader()
    for uid, rel in local:
        if rel in on_disk or cache.path(rel).exists():
            continue
        row = reader.execute(
            "SELECT path, state FROM instances WHERE sop_instance_uid = ?", (uid,)
        ).fetchone()
        if row is None or State(row["state"]) not in LOCAL_STATES:
            continue
        if not cache.path(row["path"]).exists():  # a recall may have put it back meanwhile
            out.append(uid)
    return out


def _reindex(db: Database, cache: Cache, rel: str, rep: ReconcileReport) -> None:
    path = cache.root / rel
    try:
        header = read_header(path)
        if _replace_leftover(db, cache, rel, header.sop_instance_uid):
            rep.replace_leftovers += 1
            return
        expected_rel, _ = cache.path_for(header.sop_instance_uid)
        if expected_rel != rel:
            raise PacsError(f"file is not at its instance's path ({expected_rel})")
        crc = crc32c_file(path)
        with db.write() as conn:
            exists = conn.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (header.sop_instance_uid,)
            ).fetchone()
            if not exists:
                index_instance(
                    conn,
                    header,
                    rel,
                    path.stat().st_size,
                    crc,
                    Origin("reconcile"),
                    time.time(),
                )
                rep.reindexed += 1
    except PacsError as exc:
        rep.unreadable.append(rel)
        log.error("unindexable file in the cache path=%s error=%s; moved aside", rel, exc)
        aside = cache.root / "lost+found"
        aside.mkdir(exist_ok=True)
        os.replace(path, aside / os.path.basename(rel))


def _replace_leftover(db: Database, cache: Cache, rel: str, sop_instance_uid: str) -> bool:
    """Remove `rel` if it lost an interrupted replace: its instance's row points at another
    file that exists (the winner), or is no longer local (evicted: the cloud copy stands)."""
    row = (
        db.reader()
        .execute(
            "SELECT path, state FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        )
        .fetchone()
    )
    if row is None or row["path"] == rel:
        return False
    local = State(row["state"]) in LOCAL_STATES
    if local and not (cache.root / row["path"]).is_file():
        return False  # the row's own file is gone: keep this one as evidence (lost+found)
    os.unlink(cache.root / rel)
    log.warning(
        "removed the file of an interrupted replace path=%s sop_instance_uid=%s kept=%s",
        rel,
        sop_instance_uid,
        row["path"],
    )
    return True


def _unfinished_corrections(db: Database) -> list[str]:
    """Corrections a crash interrupted (edge/corrections.py): each instance already holds
    its old or its new bytes with a matching row (the loser files were removed above as
    replace leftovers); running the same correction again rewrites the rest."""
    unfinished = pending(db)
    for study_uid, marker in unfinished.items():
        log.warning(
            "unfinished correction study_uid=%s attributes=%s: run the same `hpacs-edge "
            "studies modify` again to complete it",
            study_uid,
            ",".join(str(a) for a in marker.get("attributes") or []),
        )
    return list(unfinished)


def _reset_recalls(db: Database) -> int:
    n = 0
    with db.write() as conn:
        for row in conn.execute(
            "SELECT id FROM instances WHERE state = ?", (State.RECALLING.value,)
        ).fetchall():
            n += transition(conn, row["id"], State.RECALLING, RECOVERY[State.RECALLING])
    return n
