"""The kept versions of a study's instances in the bucket, for an admin (`studies versions`).

Every version of an instance lives under `instances/<study>/<series>/`: the bytes first
received at `<sop>.dcm`, each corrected version at `<sop>.rev-<crc32c>.dcm`
(`shared.keys.revision_key`). Objects are create-only, so nothing a correction replaced is
ever lost; listing the study's prefix shows them all, whatever the edge's index says (after a
restore too). The current version of an instance is the key its row names (or will upload
to); every other one is a kept original.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shared.checksum import Crc32c
from shared.errors import BadRequest, ChecksumMismatch, NotFound
from shared.index import Database
from shared.keys import parse_instance_object, study_objects_prefix, upload_key
from shared.store import ObjectStore


@dataclass(frozen=True)
class Version:
    sop_instance_uid: str
    series_uid: str
    key: str
    size: int
    crc32c: str
    updated: float
    revision: str  # "" for the bytes first received, else the crc32c in the key
    current: bool  # the version the index serves (or is uploading)


def current_keys(db: Database, study_uid: str) -> dict[str, str]:
    """SOP Instance UID -> the key of the version the index holds."""
    rows = db.reader().execute(
        "SELECT i.sop_instance_uid, i.object_key, se.series_uid FROM instances i "
        "JOIN series se ON se.id = i.series_id JOIN studies s ON s.id = i.study_id "
        "WHERE s.study_uid = ?",
        (study_uid,),
    )
    # a conflict row's bytes are at its conflict key, outside instances/: none listed is current
    return {
        r[0]: r[1] if r[1].startswith("conflicts/") else upload_key(study_uid, r[2], r[0], r[1])
        for r in rows
    }


def study_versions(db: Database, store: ObjectStore, study_uid: str) -> list[Version]:
    """Every instance object of the study in the bucket, by instance, oldest version first."""
    current = current_keys(db, study_uid)
    out = []
    for info in store.list(study_objects_prefix(study_uid)):
        parsed = parse_instance_object(info.key)
        if parsed is None:
            continue
        _study, series, sop, revision = parsed
        out.append(
            Version(
                sop, series, info.key, info.size, info.crc32c, info.updated, revision,
                current.get(sop) == info.key,
            )
        )  # fmt: skip
    out.sort(key=lambda v: (v.series_uid, v.sop_instance_uid, v.updated, v.revision))
    return out


def fetch_version(store: ObjectStore, study_uid: str, key: str, out: Path) -> int:
    """Download one version of an instance of this study to `out` (verified against the
    store's crc32c, written whole or not at all); returns its size."""
    parsed = parse_instance_object(key)
    if parsed is None or parsed[0] != study_uid:
        raise BadRequest(f"{key[:200]!r} is not an instance object of study {study_uid}")
    info = store.head(key)
    if info is None:
        raise NotFound(f"no object {key}")
    tmp = out.with_name(f".{out.name}.part")
    h, n = Crc32c(), 0
    try:
        with store.open(key) as src, open(tmp, "wb") as fh:
            while chunk := src.read(1024 * 1024):
                h.update(chunk)
                n += len(chunk)
                fh.write(chunk)
        if (n, h.hexdigest()) != (info.size, info.crc32c):
            raise ChecksumMismatch(f"{key}: downloaded bytes differ from the stored object")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return n
