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


_CACHE_RELPATH_RE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{64}\.dcm")


def is_cache_relpath(relpath: str) -> bool:
    """Whether `relpath` has the shape `cache_relpath` gives: it then stays inside the cache
    directory when joined to it, with no need to resolve the result."""
    return _CACHE_RELPATH_RE.fullmatch(relpath) is not None


def instance_key(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    return (
        f"instances/{_uid(study_uid, 'Study UID')}/{_uid(series_uid, 'Series UID')}/"
        f"{_uid(sop_instance_uid, 'SOP Instance UID')}.dcm"
    )


REVISION_MARK = ".rev-"  # never inside a UID (digits and dots only)
_REVISION_NAME = re.compile(r"(?P<sop>[0-9.]+?)(?:\.rev-(?P<crc>[0-9a-f]{8}))?\.dcm")


def revision_key(study_uid: str, series_uid: str, sop_instance_uid: str, crc32c_hex: str) -> str:
    """Where the bytes of a corrected instance go (edge/corrections.py): beside the original,
    named by their crc32c, `instances/<study>/<series>/<sop>.rev-<crc32c>.dcm`.

    Objects are create-only, so a correction never overwrites: the original stays at
    `instance_key` (the kept version for audit) and each corrected version gets its own key,
    which the instance's row and catalog row then name. Content-addressed, so a correction
    re-run after a crash lands on the same key with the same bytes (an idempotent put)."""
    if not re.fullmatch(r"[0-9a-f]{8}", crc32c_hex):
        raise BadRequest(f"not a crc32c hex digest: {crc32c_hex!r}")
    return instance_key(study_uid, series_uid, sop_instance_uid)[: -len(".dcm")] + (
        f"{REVISION_MARK}{crc32c_hex}.dcm"
    )


def is_revision_key(key: str) -> bool:
    return key.startswith("instances/") and REVISION_MARK in key.rsplit("/", 1)[-1]


def upload_key(study_uid: str, series_uid: str, sop_instance_uid: str, object_key: str) -> str:
    """The key the sync agent uploads a row's bytes to: the revision key a correction planned
    in the row (`object_key`), else the instance key of the first version."""
    if is_revision_key(object_key):
        return object_key
    return instance_key(study_uid, series_uid, sop_instance_uid)


def study_objects_prefix(study_uid: str) -> str:
    """Every version of every instance of a study lives under this prefix."""
    return f"instances/{_uid(study_uid, 'Study UID')}/"


def parse_instance_object(key: str) -> tuple[str, str, str, str] | None:
    """(study, series, SOP instance UID, revision crc32c or "" for the first version) of an
    instance object key; None for any other key (conflict copies, catalog objects...)."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "instances":
        return None
    m = _REVISION_NAME.fullmatch(parts[3])
    if m is None or not all(is_valid_uid(u) for u in (parts[1], parts[2], m["sop"])):
        return None
    return parts[1], parts[2], m["sop"], m["crc"] or ""


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


_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch: `$` lets a final "\n" in

# The kinds of control requests (shared/control.py) and the word their messages use.
RESTORES = "restores"
DELETIONS = "deletions"
CONTROL_KINDS = {RESTORES: "restore", DELETIONS: "deletion"}
_STATUS_SUFFIX = ".status.json"


def check_request_id(request_id: str, what: str = "request") -> str:
    """A control request's id (shared/control.py: time-sortable, a random tail)."""
    if not _REQUEST_ID_RE.fullmatch(request_id):
        raise BadRequest(f"bad {what} id {request_id[:80]!r}")
    return request_id


def control_prefix(site: str, kind: str) -> str:
    """Where the cloud API asks a site's agent for `kind` (RESTORES, DELETIONS)."""
    if kind not in CONTROL_KINDS:
        raise ValueError(f"unknown control request kind {kind!r}")
    return f"control/{check_site(site)}/{kind}/"


def control_key(site: str, kind: str, request_id: str) -> str:
    prefix = control_prefix(site, kind)
    return f"{prefix}{check_request_id(request_id, CONTROL_KINDS[kind])}.json"


def control_status_key(site: str, kind: str, request_id: str) -> str:
    """The agent's answer beside the request (the cloud's own for the STOW site's deletions)."""
    return control_key(site, kind, request_id)[: -len(".json")] + _STATUS_SUFFIX


def control_request_id(key: str) -> str | None:
    """The id a key listed under `control_prefix` names as a request; None for a status
    document or anything else found there."""
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(".json") or name.endswith(_STATUS_SUFFIX):
        return None
    return name[: -len(".json")]


def is_control_status_key(key: str) -> bool:
    return key.endswith(_STATUS_SUFFIX)


def restore_key(site: str, restore_id: str) -> str:
    """A restore requested through the cloud API (shared/restore.py)."""
    return control_key(site, RESTORES, restore_id)


def restore_status_key(site: str, restore_id: str) -> str:
    return control_status_key(site, RESTORES, restore_id)


def deletion_key(site: str, request_id: str) -> str:
    """A deletion requested through the cloud API (shared/deletion_request.py)."""
    return control_key(site, DELETIONS, request_id)


def deletion_status_key(site: str, request_id: str) -> str:
    return control_status_key(site, DELETIONS, request_id)


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
