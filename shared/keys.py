"""Where things live: cache paths and object keys, as pure functions of validated UIDs.

The cache path is an opaque fan-out from a hash of the SOP Instance UID, so no UID ever
becomes a path component on the edge. Object keys use UIDs, validated first.
"""

from __future__ import annotations

import hashlib
import re

from shared.errors import BadRequest, InvalidUID
from shared.uids import is_valid_uid

_SITE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # fullmatch: `$` lets a final "\n" in


def _uid(value: str, what: str) -> str:
    if not is_valid_uid(value):
        raise InvalidUID(f"{what} is not a valid UID: {value[:80]!r}")
    return value


def check_site(site: str) -> str:
    if not _SITE_RE.fullmatch(site):
        raise BadRequest(f"site name must match {_SITE_RE.pattern}, got {site[:80]!r}")
    return site


def cache_relpath(sop_instance_uid: str) -> str:
    """`ab/cd/<sha256>.dcm`, relative to the cache directory."""
    digest = hashlib.sha256(_uid(sop_instance_uid, "SOP Instance UID").encode()).hexdigest()
    return f"{digest[:2]}/{digest[2:4]}/{digest}.dcm"


def instance_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    return (
        f"instances/{_uid(study_uid, 'Study UID')}/{_uid(series_uid, 'Series UID')}/"
        f"{_uid(sop_instance_uid, 'SOP Instance UID')}.dcm"
    )


def conflict_key(study_uid: str, series_uid: str, sop_instance_uid: str, crc32c_hex: str) -> str:
    """Where different bytes under an existing instance key are kept, never overwriting."""
    if not re.fullmatch(r"[0-9a-f]{8}", crc32c_hex):
        raise BadRequest(f"not a crc32c hex digest: {crc32c_hex!r}")
    return (
        f"conflicts/{_uid(study_uid, 'Study UID')}/{_uid(series_uid, 'Series UID')}/"
        f"{_uid(sop_instance_uid, 'SOP Instance UID')}.{crc32c_hex}.dcm"
    )


def catalog_prefix(site: str) -> str:
    return f"catalog/{check_site(site)}/"


def catalog_key(site: str, sequence: int) -> str:
    return f"{catalog_prefix(site)}{sequence:012d}.jsonl.gz"


def catalog_sequence(key: str) -> int:
    """The sequence number of a catalog key (inverse of catalog_key)."""
    name = key.rsplit("/", 1)[-1]
    return int(name.split(".", 1)[0])


def config_prefix(site: str) -> str:
    return f"config/{check_site(site)}/"


def config_key(site: str, timestamp: str, name: str = "hpacs.toml") -> str:
    if not re.fullmatch(r"[0-9TZ:.-]+", timestamp) or "/" in name or name.startswith("."):
        raise BadRequest("bad config backup key parts")
    return f"{config_prefix(site)}{timestamp}/{name}"


def restores_prefix(site: str) -> str:
    return f"control/{check_site(site)}/restores/"


def restore_key(site: str, restore_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", restore_id):
        raise BadRequest(f"bad restore id {restore_id[:80]!r}")
    return f"{restores_prefix(site)}{restore_id}.json"


def restore_status_key(site: str, restore_id: str) -> str:
    return restore_key(site, restore_id)[: -len(".json")] + ".status.json"


def audit_key(service: str, date: str, name: str) -> str:
    if not re.fullmatch(r"[a-z0-9_-]+", service) or not re.fullmatch(r"\d{8}", date):
        raise BadRequest("bad audit key parts")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise BadRequest("bad audit object name")
    return f"audit/{service}/{date}/{name}"


def audit_checkpoints_prefix(service: str, replica: str) -> str:
    if not re.fullmatch(r"[a-z0-9_-]+", service) or not re.fullmatch(r"[A-Za-z0-9_]+", replica):
        raise BadRequest("bad audit checkpoint key parts")
    return f"audit/{service}/checkpoints/{replica}-"


def audit_checkpoint_key(service: str, replica: str, seq: int, mac: str) -> str:
    """The name carries the witness (seq and MAC of the chain's record), so `verify` lists
    checkpoints without reading them."""
    if not re.fullmatch(r"[0-9a-f]{64}", mac):
        raise BadRequest("bad audit checkpoint MAC")
    return f"{audit_checkpoints_prefix(service, replica)}{seq:012d}-{mac}.json"


SHARES_PREFIX = "shares/"


def share_key(share_id: str) -> str:
    """A share link's record (cloud API): one object per link, looked up by its id."""
    if not re.fullmatch(r"[a-z0-9]{8,40}", share_id):
        raise BadRequest(f"bad share id {share_id[:80]!r}")
    return f"{SHARES_PREFIX}{share_id}.json"
