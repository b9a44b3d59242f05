"""The body of a WADO-RS instances response, produced as segments by a worker thread.

Objects up to `SMALL_OBJECT` are fetched `READ_AHEAD` at a time through the caller's bounded
pool (a bucket's per-object latency would otherwise add up over a study); larger ones are
streamed chunk by chunk. Many small instances share one segment, a large one spans several, so
memory stays within READ_AHEAD * SMALL_OBJECT + SEGMENT per response whatever the study size.
Instances to convert (another transfer syntax negotiated) are read whole, converted in the pool
and sent as the converter's bytes; a response with any of them has no Content-Length.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import BinaryIO

import pydicom

from shared.dicomweb.media import DICOM
from shared.dicomweb.multipart import closing, part_header
from shared.dicomweb.source import InstanceRef
from shared.errors import ChecksumMismatch, InvalidDataset, NoConversion
from shared.transcode import choose, convert, encode

CHUNK = 1024 * 1024
SEGMENT = 4 * 1024 * 1024
SMALL_OBJECT = 8 * 1024 * 1024
READ_AHEAD = 8

Opener = Callable[[InstanceRef], BinaryIO]


@dataclass(frozen=True)
class Planned:
    """One instance of the response and the transfer syntax it goes out in."""

    ref: InstanceRef
    target: str

    @property
    def as_is(self) -> bool:
        return self.target == self.ref.transfer_syntax

    @property
    def part_type(self) -> str:
        return f"{DICOM}; transfer-syntax={self.target}"


def plan(refs: Sequence[InstanceRef], targets: dict[str, str]) -> list[Planned]:
    """Pair each instance with its target (from `media.negotiate_instances`)."""
    return [Planned(r, targets[r.transfer_syntax]) for r in refs]


def content_length(parts: Sequence[Planned], boundary: str) -> int | None:
    """The body's length when every part goes out as stored (sizes come from the catalog):
    a Content-Length spares clients chunked decoding (slow in Python's http.client)."""
    if not all(p.as_is for p in parts):
        return None
    heads = sum(len(part_header(boundary, p.part_type, i == 0)) for i, p in enumerate(parts))
    return heads + sum(p.ref.size for p in parts) + len(closing(boundary))


def convert_instance(data: bytes, target: str) -> bytes:
    """A stored Part-10 object re-encoded in `target` (NoConversion when that fails)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise InvalidDataset(f"stored object is not readable DICOM: {exc}") from exc
    stored = str(ds.file_meta.get("TransferSyntaxUID", ""))
    return encode(convert(ds, choose(stored, [target])), target)


def segments(
    parts: Sequence[Planned], boundary: str, open_: Opener, pool: Executor
) -> Generator[bytes, None, None]:
    """Multipart body segments for `parts`; call `next` from a worker thread."""
    out: list[bytes] = []
    size = 0
    pending: deque[Future[bytes] | None] = deque()
    queued = 0

    def fill() -> None:
        nonlocal queued
        while queued < len(parts) and len(pending) < READ_AHEAD:
            p = parts[queued]
            if not p.as_is:
                pending.append(pool.submit(_read_converted, open_, p))
            elif p.ref.size <= SMALL_OBJECT:
                pending.append(pool.submit(_read_all, open_, p.ref))
            else:
                pending.append(None)  # streamed below, in this thread
            queued += 1

    try:
        fill()
        for i, p in enumerate(parts):
            fut = pending.popleft()
            fill()
            out.append(part_header(boundary, p.part_type, i == 0))
            got = 0
            if fut is not None:
                data = fut.result()
                out.append(data)
                got = len(data)
                size += got
            else:
                with open_(p.ref) as fh:
                    while chunk := fh.read(CHUNK):
                        out.append(chunk)
                        size += len(chunk)
                        got += len(chunk)
                        if size >= SEGMENT:
                            yield b"".join(out)
                            out, size = [], 0
            if p.as_is and got != p.ref.size:  # the announced length would be a lie: abort
                uid = p.ref.sop_instance_uid
                raise ChecksumMismatch(f"instance {uid} is not its cataloged size")
            if size >= SEGMENT:
                yield b"".join(out)
                out, size = [], 0
        out.append(closing(boundary))
        yield b"".join(out)
    finally:
        for fut in pending:  # an aborted response: do not leave reads queued in the pool
            if fut is not None:
                fut.cancel()


def _read_all(open_: Opener, ref: InstanceRef) -> bytes:
    with open_(ref) as fh:
        return fh.read()


def _read_converted(open_: Opener, p: Planned) -> bytes:
    try:
        return convert_instance(_read_all(open_, p.ref), p.target)
    except NoConversion as exc:
        raise NoConversion(f"instance {p.ref.sop_instance_uid}: {exc}") from exc


def read_ahead(
    items: Sequence[InstanceRef], fn: Callable[[InstanceRef], bytes], pool: Executor
) -> Generator[bytes, None, None]:
    """`fn(item)` for each item, in order, with at most READ_AHEAD of them running in the pool
    (one response never takes the whole shared pool)."""
    pending: deque[Future[bytes]] = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= READ_AHEAD:
                break
        while pending:
            fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield fut.result()
    finally:
        for fut in pending:
            fut.cancel()
