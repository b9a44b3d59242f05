"""`gs://bucket[/prefix]` on google-cloud-storage; the only module that imports it (and tenacity).

Every client call passes an explicit `timeout=` and `retry=None`, so the library never retries on
its own (its default keeps a dead endpoint busy for 120 s); a short tenacity policy here retries
transient failures a few times within one call, and callers (the upload loop) keep the long-term
retry state in the index row. Errors leave this module classified: `TransientStoreError`,
`PermanentStoreError`, `ChecksumMismatch`, `ObjectExists`, `NotFound`.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import google.api_core.exceptions as gexc
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from shared.checksum import b64_to_hex
from shared.errors import (
    ChecksumMismatch,
    NotFound,
    ObjectExists,
    ObjectStoreError,
    PermanentStoreError,
    TransientStoreError,
)
from shared.store.base import ObjectInfo

T = TypeVar("T")
# Above this size the client switches to resumable uploads, where emulators ignore
# `if_generation_match`; we look before we leap there (see NOTES.md).
MULTIPART_MAX = 8 * 1024 * 1024
TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}
CHUNK = 1024 * 1024


class _RangeReader(io.RawIOBase):
    """Reads [start, end) of an object by successive range requests; EOF on a short chunk."""

    def __init__(self, fetch: Callable[[int, int], bytes], start: int, end: int | None, chunk: int):
        self._fetch, self._pos, self._end, self._chunk = fetch, start, end, chunk
        self._buf, self._off, self._eof = b"", 0, False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        hi = (
            self._pos + self._chunk
            if self._end is None
            else min(self._end, self._pos + self._chunk)
        )
        if hi <= self._pos:
            self._eof = True
            return
        data = self._fetch(self._pos, hi)
        self._eof = len(data) < hi - self._pos or hi == self._end
        self._pos += len(data)
        self._buf, self._off = data, 0

    def readinto(self, b: Any) -> int:
        if self._off >= len(self._buf):
            if self._eof:
                return 0
            self._fill()
        n = min(len(b), len(self._buf) - self._off)
        b[:n] = self._buf[self._off : self._off + n]
        self._off += n
        return n


def classify(exc: BaseException) -> ObjectStoreError | NotFound | None:
    """Map a client exception to our error classes; None when it is not a store error."""
    if isinstance(exc, ObjectStoreError | NotFound):
        return exc
    if isinstance(exc, gexc.PreconditionFailed):
        return ObjectExists(str(exc))
    if isinstance(exc, gexc.NotFound):
        return NotFound(str(exc))
    if isinstance(exc, gexc.GoogleAPICallError):
        code = int(exc.code or 0)
        if code in TRANSIENT_HTTP:
            return TransientStoreError(f"HTTP {code}: {exc}")
        if code == 400 and re.search(r"crc32c|md5|checksum|hash", str(exc), re.I):
            return ChecksumMismatch(f"HTTP 400: {exc}")  # GCS refused bytes that fail their hash
        return PermanentStoreError(f"HTTP {code}: {exc}")
    if isinstance(exc, gexc.RetryError | requests.exceptions.RequestException | TimeoutError):
        return TransientStoreError(f"{type(exc).__name__}: {exc}")
    name = type(exc).__name__
    if name == "DataCorruption":  # google.resumable_media: a download failed its checksum
        return ChecksumMismatch(str(exc))
    if name == "InvalidResponse":  # google.resumable_media: carries the response
        code = int(getattr(getattr(exc, "response", None), "status_code", 0) or 0)
        if code == 412:
            return ObjectExists(str(exc))
        if code == 404:
            return NotFound(str(exc))
        if code in TRANSIENT_HTTP or code == 0:
            return TransientStoreError(f"HTTP {code}: {exc}")
        return PermanentStoreError(f"HTTP {code}: {exc}")
    if isinstance(exc, ConnectionError):
        return TransientStoreError(f"{type(exc).__name__}: {exc}")
    return None


def _info(blob: Any, key: str) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=int(blob.size or 0),
        crc32c=b64_to_hex(blob.crc32c) if blob.crc32c else "",
        md5=b64_to_hex(blob.md5_hash) if blob.md5_hash else "",
        content_type=blob.content_type or "application/octet-stream",
        metadata=dict(blob.metadata or {}),
        updated=blob.updated.timestamp() if blob.updated else 0.0,
    )


class GcsStore:
    """One bucket (and optional key prefix) of Google Cloud Storage or an emulator of it."""

    def __init__(
        self,
        url: str,
        *,
        emulator_host: str = "",
        project: str = "",
        timeout_s: float = 60.0,
        attempts: int = 3,
        max_wait_s: float = 2.0,
        range_chunk: int = 16 * 1024 * 1024,
    ) -> None:
        rest = url[len("gs://") :].strip("/")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {url!r}")
        self.url = url
        self.prefix = f"{prefix}/" if prefix else ""
        self.timeout_s = timeout_s
        self._attempts = attempts
        self._max_wait_s = max_wait_s
        self.range_chunk = range_chunk
        emulator = emulator_host or os.environ.get("STORAGE_EMULATOR_HOST", "")
        try:
            if emulator:
                if "://" not in emulator:
                    emulator = f"http://{emulator}"
                self.client = storage.Client(
                    project=project or "hpacs",
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                    client_options={"api_endpoint": emulator},
                )
            else:
                self.client = storage.Client(project=project or None)
        except Exception as exc:  # google.auth: no default credentials, bad key file, ...
            raise PermanentStoreError(
                f"cannot create the GCS client for {url}: {exc}",
                hint="set GOOGLE_APPLICATION_CREDENTIALS, or sync.emulator_host for an emulator",
            ) from exc
        self.bucket = self.client.bucket(bucket)

    # ---- plumbing -----------------------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        """Run one client call; transient failures retried briefly, every error classified."""
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_random_exponential(multiplier=0.1, max=self._max_wait_s),
            retry=retry_if_exception_type(TransientStoreError),
            reraise=True,
        )
        return retrying(self._classified, fn)

    @staticmethod
    def _classified(fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            err = classify(exc)
            if err is None or err is exc:
                raise
            raise err from exc

    def _name(self, key: str) -> str:
        if not key or key.startswith("/") or "\\" in key or "\x00" in key:
            raise PermanentStoreError(f"bad object key {key[:120]!r}")
        return self.prefix + key

    def _key(self, name: str) -> str:
        return name[len(self.prefix) :]

    # ---- the ObjectStore protocol ---------------------------------------------------------
    def put(
        self,
        key: str,
        source: Path | bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        if_absent: bool = True,
    ) -> ObjectInfo:
        name = self._name(key)
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        if if_absent and size > MULTIPART_MAX and self.head(key) is not None:
            raise ObjectExists(f"{key} exists")
        precondition = {"if_generation_match": 0} if if_absent else {}

        def upload() -> ObjectInfo:
            blob = self.bucket.blob(name)
            if metadata:
                blob.metadata = dict(metadata)
            common: dict[str, Any] = dict(
                content_type=content_type,
                timeout=self.timeout_s,
                retry=None,
                checksum="crc32c",
                **precondition,
            )
            if isinstance(source, bytes):
                blob.upload_from_string(source, **common)
            else:
                blob.upload_from_filename(str(source), **common)
            return _info(blob, key)

        return self._call(upload)

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """A stream fetching `range_chunk` bytes per request, so a multi-GB object never sits in
        memory whole; an object smaller than one chunk costs one request, as a plain GET."""
        name = self._name(key)

        def fetch(lo: int, hi: int) -> bytes:
            def download() -> bytes:
                try:
                    return bytes(
                        self.bucket.blob(name).download_as_bytes(
                            start=lo or None,
                            end=hi - 1,
                            timeout=self.timeout_s,
                            retry=None,
                            checksum=None,  # callers compare crc32c with the index
                        )
                    )
                except gexc.RequestRangeNotSatisfiable:
                    return b""  # empty object, or the last chunk ended exactly at its end

            return self._call(download)

        return io.BufferedReader(_RangeReader(fetch, start, end, self.range_chunk), CHUNK)  # type: ignore[return-value]

    def head(self, key: str) -> ObjectInfo | None:
        name = self._name(key)
        blob = self._call(lambda: self.bucket.get_blob(name, timeout=self.timeout_s, retry=None))
        return None if blob is None else _info(blob, key)

    def delete(self, key: str) -> None:
        name = self._name(key)
        self._call(lambda: self.bucket.blob(name).delete(timeout=self.timeout_s, retry=None))

    def list(self, prefix: str, start_offset: str = "") -> Iterator[ObjectInfo]:
        kwargs: dict[str, Any] = {"prefix": self.prefix + prefix}
        if start_offset:
            kwargs["start_offset"] = self.prefix + start_offset

        def page_through() -> list[ObjectInfo]:
            blobs = self.client.list_blobs(
                self.bucket, timeout=self.timeout_s, retry=None, **kwargs
            )
            return [_info(b, self._key(b.name)) for b in blobs]

        # The listing is materialised so a transient failure mid-way retries it whole.
        yield from sorted(self._call(page_through), key=lambda i: i.key)

    def set_hold(self, key: str, held: bool) -> bool:
        """A GCS temporary hold (a legal hold: lifted by hand, no retention clock attached;
        event-based holds restart a bucket retention policy's clock on release, which is not
        what a released legal hold means). GCS refuses to delete a held object (403)."""
        name = self._name(key)

        def patch() -> bool:
            blob = self.bucket.blob(name)
            blob.temporary_hold = held
            blob.patch(timeout=self.timeout_s, retry=None)
            return bool(blob.temporary_hold) == held  # the object resource as the server says

        return self._call(patch)

    # ---- helpers beyond the protocol --------------------------------------------------------
    def create_bucket(self) -> None:
        """For emulators and first-time setup: create the bucket if it is not there."""
        try:
            self._call(
                lambda: self.client.create_bucket(self.bucket, timeout=self.timeout_s, retry=None)
            )
        except PermanentStoreError as exc:
            if "409" not in str(exc):
                raise
