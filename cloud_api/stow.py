"""STOW-RS service: one received part (a temp file) -> bucket object + catalog row for site `cloud`.

Synchronous (called from worker threads). The object key comes from `shared.keys.instance_key`
and the write is create-only: the same bytes stored twice succeed (idempotent retries), other
bytes under an existing SOP Instance UID are never an overwrite. For a caller that may read
every site they are a `DuplicateConflict` (0x0111); for any other caller (an `agent` token) the
answer must not say whether the UID exists, so the bytes are kept under `conflict_key` (as the
sync agent keeps its conflicts), logged for an admin, and the part answers like a new instance
(docs/ARCHITECTURE.md, "Existence oracle"). Catalog
rows go to the next free `catalog/cloud/<seq>` object, also create-only, so several replicas
can accept uploads at once without overwriting each other's journal.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from shared import acceptance
from shared.catalog import CatalogRow
from shared.checksum import crc32c_file
from shared.dicom import Header, read_header
from shared.errors import (
    DuplicateConflict,
    ObjectExists,
    PacsError,
    UIDMismatch,
    dimse_status,
)
from shared.journal import Journal
from shared.keys import catalog_sequence, conflict_key, instance_key
from shared.store.base import ObjectStore

STOW_SITE = "cloud"

log = logging.getLogger("hpacs.cloud.stow")


@dataclass
class StowOutcome:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str = ""
    series_uid: str = ""
    row: CatalogRow | None = None
    failure: int = 0  # DIMSE failure reason (PS3.18 Table I.2-1 uses the DIMSE statuses)
    error: str = ""
    kept_as: str = ""  # different bytes under an existing UID, kept here (hidden conflict)

    @property
    def stored(self) -> bool:
        """What the caller is told: stored (a new instance, the same bytes again, or a
        conflict it may not learn about) or failed."""
        return self.row is not None or bool(self.kept_as)


def _normalise(path: Path) -> Header:
    """The acceptance rule every door applies (shared/acceptance.py), then the headers. A bare
    dataset (no preamble, as dicomweb-client may send) is accepted, like on the edge, and
    rewritten as Part-10 in place so the bucket only ever holds Part-10 objects."""
    accepted = acceptance.check(path)
    if not accepted.part10:
        acceptance.rewrite_as_part10(path, accepted)
    return read_header(path)


def store_part(
    store: ObjectStore, path: Path, study_uid: str | None, *, reveal_existing: bool = True
) -> StowOutcome:
    """Validate, upload create-only and describe one part; failures are in the outcome.
    `reveal_existing`: whether the caller may learn that the UID exists with other bytes."""
    out = StowOutcome("", "")
    try:
        h = _normalise(path)
        out.sop_class_uid, out.sop_instance_uid = h.sop_class_uid, h.sop_instance_uid
        out.study_uid, out.series_uid = h.study_uid, h.series_uid
        if study_uid and h.study_uid != study_uid:
            raise UIDMismatch("the instance's Study Instance UID differs from the URL's")
        key = instance_key(h.study_uid, h.series_uid, h.sop_instance_uid)
        crc = crc32c_file(path)
        size = path.stat().st_size
        try:
            store.put(key, path, content_type="application/dicom", if_absent=True)
        except ObjectExists:
            existing = store.head(key)
            if existing is None or existing.crc32c != crc:
                if not reveal_existing:
                    out.kept_as = _keep_conflict(store, path, h, crc)
                    return out
                raise DuplicateConflict(
                    "different bytes are stored under this SOP Instance UID"
                ) from None
        out.row = CatalogRow(
            header=h,
            size=size,
            crc32c=crc,
            object_key=key,
            site=STOW_SITE,
            received_at=time.time(),
            source="stow",
        )
    except PacsError as exc:
        out.failure, out.error = dimse_status(exc), str(exc)
    return out


def _keep_conflict(store: ObjectStore, path: Path, h: Header, crc: str) -> str:
    """Keep other bytes under an existing UID beside it, create-only; no catalog row (the
    stored instance stays the one every reader sees)."""
    key = conflict_key(h.study_uid, h.series_uid, h.sop_instance_uid, crc)
    try:
        store.put(key, path, content_type="application/dicom", if_absent=True)
    except ObjectExists:
        existing = store.head(key)
        if existing is None or existing.crc32c != crc:
            raise DuplicateConflict("could not keep the conflicting copy") from None
    log.warning(
        "STOW conflict kept sop_instance_uid=%s key=%s: other bytes exist under this UID; the "
        "caller may not learn it and was answered as for a new instance (resolve by hand)",
        h.sop_instance_uid,
        key,
    )
    return key


def append_catalog(store: ObjectStore, rows: list[CatalogRow], hint_key: str = "") -> str:
    """Write rows as the next catalog object of site `cloud` (the one journal writer); returns
    its key. `hint_key`: the last catalog key known, where listing for the next number starts."""
    start = catalog_sequence(hint_key) if hint_key else 1
    return Journal(store, STOW_SITE, start=start).append(rows)[1]
