"""One hierarchy of domain errors, rendered once per protocol.

Handlers never choose a status by hand: they catch `PacsError` and look the class up in
`DIMSE_STATUS` or `HTTP_STATUS`. A test checks that every concrete class is in both tables.
"""

from __future__ import annotations


class PacsError(Exception):
    """Base of every error hpacs reports to a peer.

    `hint` tells an admin what to do; it goes to the log, never to the peer.
    """

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class InvalidUID(PacsError):
    hint = "the sender produced a malformed UID; fix the modality's UID generator"


class InvalidDataset(PacsError):
    hint = "the object could not be parsed as DICOM; check the sender or the file"


class UIDMismatch(PacsError):
    hint = "the command's Affected SOP Class/Instance UID differs from the dataset's"


class DuplicateConflict(PacsError):
    hint = "different bytes arrived under an existing SOP Instance UID; set edge.duplicates"


class OutOfResources(PacsError):
    hint = "the cache filesystem is full or unwritable; free space or raise eviction"


class IndexUnavailable(PacsError):
    hint = "the SQLite index could not be written; check disk space and file permissions"


class InstanceBusy(PacsError):
    hint = "the instance is being evicted or recalled; the sender may send it again shortly"


class NotAuthorized(PacsError):
    hint = "grant the permission with `hpacs-edge nodes add ... --permissions`"


class UnknownDestination(PacsError):
    hint = "register the destination with `hpacs-edge nodes add`"


class NotFound(PacsError):
    hint = ""


class BadRequest(PacsError):
    hint = ""


class InvalidField(BadRequest):
    """A request body whose named field is wrong; `field` goes to the client (problem+json
    member `field`) so a form can mark the input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Conflict(PacsError):
    """The request contradicts the current state (a name taken, a node a route still uses)."""

    hint = ""


class Unauthenticated(PacsError):
    hint = "the request carried no valid bearer token"


class ObjectStoreError(PacsError):
    """Object store failures; `transient` says whether retrying can help."""

    transient = False


class TransientStoreError(ObjectStoreError):
    transient = True
    hint = "the object store is unreachable or overloaded; uploads will retry"


class PermanentStoreError(ObjectStoreError):
    hint = "check the bucket name and the credentials"


class ChecksumMismatch(ObjectStoreError):
    hint = "bytes changed in transit or at rest; the instance stays in the cache"


class ObjectExists(ObjectStoreError):
    hint = ""


class CorruptInstance(PacsError):
    """A cached file whose bytes no longer match the crc32c recorded at ingest."""

    hint = (
        "the cache file was damaged at rest; hpacs quarantined it and serves the verified "
        "cloud copy when one exists (check the cache disk's health)"
    )


class NoConversion(PacsError):
    hint = "the destination accepts none of the transfer syntaxes hpacs can produce"


class PayloadTooLarge(PacsError):
    hint = "the request body is over the configured limit (cloud.max_body_bytes)"


class TooManyRequests(PacsError):
    """A client over its rate limit; `retry_after_s` goes to the peer (HTTP Retry-After)."""

    hint = "a client keeps sending refused requests; see the audit trail's denied records"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnsupportedMediaType(PacsError):
    hint = "the client sent a request body of a media type this service does not take"


class Gone(PacsError):
    hint = "the share link expired or was revoked: ask its sender for a new one"


class InstanceDeleted(PacsError):
    """The instance was deleted on this node and is still within its grace period: its SOP
    Instance UID stays registered until the purge (docs/admin-guide.md, "Deleting studies")."""

    hint = (
        "the instance was deleted here; `hpacs-edge studies undelete` brings it back, or it "
        "can be sent again once purged (retention.delete_grace_days)"
    )


class Forbidden(PacsError):
    """A retention rule or a legal hold forbids the action (not a missing permission)."""

    hint = "see `hpacs-edge retention report` and `hpacs-edge studies holds`"


# Named DIMSE statuses (PS3.7 Annex C and the service classes of PS3.4).
SUCCESS = 0x0000
REFUSED_NOT_AUTHORIZED = 0x0124
DUPLICATE_SOP_INSTANCE = 0x0111
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
OUT_OF_RESOURCES_SUBOPS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
IDENTIFIER_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
UNABLE_TO_PROCESS = 0xC001
CANCEL = 0xFE00
PENDING = 0xFF00
SUBOPS_WARNING = 0xB000

DIMSE_STATUS: dict[type[PacsError], int] = {
    InvalidUID: DATASET_DOES_NOT_MATCH_SOP_CLASS,
    InvalidDataset: CANNOT_UNDERSTAND,
    UIDMismatch: DATASET_DOES_NOT_MATCH_SOP_CLASS,
    DuplicateConflict: DUPLICATE_SOP_INSTANCE,
    OutOfResources: OUT_OF_RESOURCES,
    IndexUnavailable: OUT_OF_RESOURCES,
    InstanceBusy: OUT_OF_RESOURCES,
    NotAuthorized: REFUSED_NOT_AUTHORIZED,
    UnknownDestination: MOVE_DESTINATION_UNKNOWN,
    NotFound: UNABLE_TO_PROCESS,
    BadRequest: IDENTIFIER_DOES_NOT_MATCH,
    InvalidField: IDENTIFIER_DOES_NOT_MATCH,
    Conflict: UNABLE_TO_PROCESS,
    Unauthenticated: REFUSED_NOT_AUTHORIZED,
    ObjectStoreError: UNABLE_TO_PROCESS,
    TransientStoreError: UNABLE_TO_PROCESS,
    PermanentStoreError: UNABLE_TO_PROCESS,
    ChecksumMismatch: UNABLE_TO_PROCESS,
    ObjectExists: UNABLE_TO_PROCESS,
    CorruptInstance: UNABLE_TO_PROCESS,
    NoConversion: UNABLE_TO_PROCESS,
    PayloadTooLarge: OUT_OF_RESOURCES,
    TooManyRequests: OUT_OF_RESOURCES,
    UnsupportedMediaType: CANNOT_UNDERSTAND,
    Gone: UNABLE_TO_PROCESS,
    InstanceDeleted: DUPLICATE_SOP_INSTANCE,
    Forbidden: UNABLE_TO_PROCESS,
}

HTTP_STATUS: dict[type[PacsError], int] = {
    InvalidUID: 400,
    InvalidDataset: 400,
    UIDMismatch: 409,
    DuplicateConflict: 409,
    OutOfResources: 507,
    IndexUnavailable: 503,
    InstanceBusy: 503,
    NotAuthorized: 403,
    UnknownDestination: 404,
    NotFound: 404,
    BadRequest: 400,
    InvalidField: 400,
    Conflict: 409,
    Unauthenticated: 401,
    ObjectStoreError: 502,
    TransientStoreError: 503,
    PermanentStoreError: 502,
    ChecksumMismatch: 502,
    ObjectExists: 409,
    CorruptInstance: 502,
    NoConversion: 406,
    PayloadTooLarge: 413,
    TooManyRequests: 429,
    UnsupportedMediaType: 415,
    Gone: 410,
    InstanceDeleted: 409,
    Forbidden: 409,
}


def _lookup(table: dict[type[PacsError], int], err: PacsError, default: int) -> int:
    for cls in type(err).__mro__:
        if cls in table:
            return table[cls]  # type: ignore[index]
    return default


def dimse_status(err: BaseException) -> int:
    """The DIMSE status for an error; anything unexpected is a processing failure."""
    if isinstance(err, PacsError):
        return _lookup(DIMSE_STATUS, err, UNABLE_TO_PROCESS)
    if isinstance(err, OSError):
        return OUT_OF_RESOURCES
    return UNABLE_TO_PROCESS


def http_status(err: BaseException) -> int:
    """The HTTP status for an error; anything unexpected is a 500."""
    if isinstance(err, PacsError):
        return _lookup(HTTP_STATUS, err, 500)
    return 500


def problem_json(err: BaseException) -> dict[str, object]:
    """RFC 9457 problem details for an error (no hint: hints are for the log)."""
    status = http_status(err)
    title = type(err).__name__ if isinstance(err, PacsError) else "InternalError"
    detail = str(err) if isinstance(err, PacsError) else "internal error"
    body: dict[str, object] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if isinstance(err, InvalidField):
        body["field"] = err.field  # an extension member (RFC 9457 section 3.2)
    return body
