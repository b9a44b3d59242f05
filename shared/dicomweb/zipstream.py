"""A study (or series) as one ZIP download, streamed: WADO-RS retrieve with `application/zip`.

PS3.18 lets a retrieve of a study, series or instance answer `application/zip` (a ZIP of the
Part-10 objects) when the client asks for it in `Accept` or in the `accept` query parameter
(which a plain link can carry: the study browser's "Download" is an `<a href>`). Members are
the stored bytes unchanged (no conversion: a transfer syntax other than `*` is 406), named
`<study>/<series>/<instance>.dcm` (UIDs, already validated: no name from outside reaches a
path), stored without compression: a CPU-bound deflate on a shared 2-core machine would make
the server the bottleneck, and most pixel data is compressed already.

Memory stays bounded whatever the study's size: `zipfile` writes to a sink that cannot seek,
so every member gets a data descriptor instead of a header rewritten in place, and the sink
is drained into segments of about `stream.SEGMENT`; objects up to `stream.SMALL_OBJECT` are
read `stream.READ_AHEAD` at a time through the caller's pool (bucket latency), larger ones
chunk by chunk. Zip64 records are written when a member or the archive needs them.

Pure apart from the `open_` and `pool` the caller supplies (as `stream.segments`).
"""

from __future__ import annotations

import io
import time
import zipfile
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Executor, Future

from shared.dicomweb.media import MediaRange, parse_accept
from shared.dicomweb.source import InstanceRef
from shared.dicomweb.stream import CHUNK, READ_AHEAD, SEGMENT, SMALL_OBJECT, Opener
from shared.errors import ChecksumMismatch, NoConversion

ZIP = "application/zip"
_RETRIEVE_TYPES = ("multipart/related", "application/dicom", "*/*", "multipart/*")


def wants_zip(accept_header: str | None, accept_param: str | None = None) -> bool:
    """Whether a retrieve asks for a ZIP: the `accept` query parameter when present (it takes
    the place of the header, PS3.18 8.3.3.1), else the Accept header, where `application/zip`
    must be preferred at least as much as any multipart or DICOM range. NoConversion when the
    ZIP is asked in a transfer syntax other than the stored one."""
    ranges = parse_accept(accept_param if accept_param else accept_header)
    zips = [r for r in ranges if r.type == ZIP and r.q > 0]
    if not zips:
        return False
    best = max(r.q for r in zips)
    others = [r.q for r in ranges if r.type in _RETRIEVE_TYPES and r.q > best]
    if others:
        return False
    _check_syntax([r for r in zips if r.q == best])
    return True


def _check_syntax(zips: Sequence[MediaRange]) -> None:
    if any(r.transfer_syntax in (None, "*") for r in zips):
        return
    asked = ", ".join(sorted({str(r.transfer_syntax) for r in zips}))
    raise NoConversion(f"a ZIP holds the stored objects as they are; asked: {asked}")


def headers(study_uid: str) -> dict[str, str]:
    """Response headers: the file is named after the study UID, never the patient."""
    return {
        "Content-Type": ZIP,
        "Content-Disposition": f'attachment; filename="{study_uid}.zip"',
        "X-Content-Type-Options": "nosniff",
    }


def member_name(ref: InstanceRef) -> str:
    return f"{ref.study_uid}/{ref.series_uid}/{ref.sop_instance_uid}.dcm"


class _Sink(io.RawIOBase):
    """Collects what zipfile writes; not seekable, so zipfile streams (data descriptors)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes(b)
        self._parts.append(data)
        self.size += len(data)
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts, self.size = [], 0
        return out


def segments(
    refs: Sequence[InstanceRef], open_: Opener, pool: Executor
) -> Generator[bytes, None, None]:
    """The ZIP of `refs`, in segments; call `next` from a worker thread (reads block)."""
    sink = _Sink()
    pending: deque[Future[bytes] | None] = deque()
    queued = 0

    def fill() -> None:
        nonlocal queued
        while queued < len(refs) and len(pending) < READ_AHEAD:
            ref = refs[queued]
            small = ref.size <= SMALL_OBJECT
            pending.append(pool.submit(_read_all, open_, ref) if small else None)
            queued += 1

    try:
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            fill()
            for ref in refs:
                fut = pending.popleft()
                fill()
                info = zipfile.ZipInfo(member_name(ref), time.localtime()[:6])
                info.file_size = ref.size  # decides zip64 before the size is known for sure
                got = 0
                with zf.open(info, "w") as member:
                    if fut is not None:
                        data = fut.result()
                        member.write(data)
                        got = len(data)
                    else:
                        with open_(ref) as fh:
                            while chunk := fh.read(CHUNK):
                                member.write(chunk)
                                got += len(chunk)
                                if sink.size >= SEGMENT:
                                    yield sink.take()
                if got != ref.size:  # a short or long object: abort rather than ship it
                    raise ChecksumMismatch(f"instance {ref.sop_instance_uid} is not its size")
                if sink.size >= SEGMENT:
                    yield sink.take()
        yield sink.take()  # the central directory
    finally:
        for pend in pending:  # an aborted download: leave no reads queued in the pool
            if pend is not None:
                pend.cancel()


def _read_all(open_: Opener, ref: InstanceRef) -> bytes:
    with open_(ref) as fh:
        return fh.read()
