"""One door for every correction (CLI verbs, console form): one at a time, audited.

`correct` builds the `Corrector` from the config (object store, recaller), holds the edge's
correction lock, runs the correction and writes the audit records: one per study corrected
(who, the attribute names, the reason, the counts), or one for a refusal or failure (with its
reason). Never values: the values before and after are the versions kept in the bucket,
which an admin reads with `hpacs-edge studies versions` (edge/versions.py), so the audit trail
(shipped to `audit/<site>/`) carries no patient data.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.audit import EdgeAudit
from edge.cache import Cache
from edge.corrections import Corrector, Report
from edge.recall import StoreRecaller
from shared.config import Config
from shared.errors import Conflict, PacsError
from shared.index import Database
from shared.store import ObjectStore, open_store

LOCK_NAME = "corrections.lock"


def store_factory(cfg: Config) -> ObjectStore | None:
    s = cfg.sync
    if not s.store_url:
        return None
    return open_store(s.store_url, emulator_host=s.emulator_host, timeout_s=s.upload_timeout_s)


def make_corrector(cfg: Config, db: Database) -> tuple[Corrector, StoreRecaller | None]:
    cache = Cache(cfg.edge.cache_dir)
    store = store_factory(cfg)
    recaller = None
    if store is not None:
        recaller = StoreRecaller(db, cache, store, concurrency=cfg.sync.recall_concurrency)
    return Corrector(db, cache, store, recaller), recaller


@contextmanager
def exclusive(cfg: Config) -> Iterator[None]:
    """One correction at a time on this edge, across processes (CLI and console): two of the
    same study with different values could otherwise leave its instances mixed. The kernel
    drops the lock of a killed process."""
    path = Path(cfg.edge.data_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict("another correction is running on this edge; try again") from None
        yield
    finally:
        os.close(fd)


def audit_record(
    audit: EdgeAudit,
    rep: Report | None,
    changes: dict[str, str],
    reason: str,
    *,
    actor: str,
    action: str = "study-modify",
    study_uid: str = "",
    error: str = "",
    **who: str,
) -> None:
    """One record per study corrected (or one for a refusal): attribute names, never values."""
    names = ",".join(sorted(changes))
    if rep is None or error:
        audit.record(
            action=action, actor=actor, target=study_uid, study_uid=study_uid, reason=reason,
            outcome="error", detail=f"attributes={names} error={error}", **who,
        )  # fmt: skip
        return
    for uid in rep.study_uids:
        audit.record(
            action=action, actor=actor, target=uid, study_uid=uid, reason=reason,
            detail=f"attributes={names} {rep.summary()}", **who,
        )  # fmt: skip


def correct(
    cfg: Config,
    db: Database,
    changes: dict[str, str],
    reason: str,
    *,
    study_uid: str = "",
    patient_id: str = "",
    action: str = "study-modify",
    actor: str,
    audit: EdgeAudit,
    **who: str,
) -> Report:
    """The one path of every correction door: lock, correct, audit (success or failure)."""
    corrector, recaller = make_corrector(cfg, db)
    try:
        with exclusive(cfg):
            if patient_id:
                rep = corrector.modify_patient(patient_id, changes, actor)
            else:
                rep = corrector.modify_study(study_uid, changes, actor)
    except PacsError as exc:
        audit_record(
            audit, None, changes, reason, actor=actor, action=action, study_uid=study_uid,
            error=str(exc)[:200], **who,
        )  # fmt: skip
        raise
    finally:
        if recaller is not None:
            recaller.close()
    audit_record(audit, rep, changes, reason, actor=actor, action=action, **who)
    return rep
