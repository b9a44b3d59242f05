"""The synchronous work of WADO-RS requests over a `DicomwebSource` (run in worker threads).

Metadata reads a header probe per instance (the whole object only when its header is longer)
a few at a time in the app's shared pool, and keeps each encoded instance in a byte-bounded
cache keyed by the exact bytes (`InstanceRef.version`: SOP Instance UID and crc32c), so a
second `/metadata` of a study encodes nothing. Frames, bulk data, rendered and thumbnail read
the one instance whole.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor

import pydicom
from pydicom.dataset import Dataset

from shared.dicomweb import metadata, render, stream
from shared.dicomweb.source import DicomwebSource, InstanceRef
from shared.errors import InvalidDataset, NoConversion, NotFound


def read_object(source: DicomwebSource, ref: InstanceRef, header_only: bool = False) -> bytes:
    if header_only:
        with source.open(ref, 0, metadata.HEADER_PROBE_BYTES) as fh:
            return fh.read()
    with source.open(ref) as fh:
        return fh.read()


def metadata_one(source: DicomwebSource, ref: InstanceRef, probe: bytes) -> bytes:
    """One instance's DICOM JSON, encoded with relative URLs; the whole object is read only
    when its header is longer than the probe."""
    try:
        ds = metadata.parse_header(probe)
        complete = metadata.header_complete(ds, len(probe))
    except InvalidDataset:
        complete = len(probe) < metadata.HEADER_PROBE_BYTES
        if complete:
            raise
    if not complete:
        ds = metadata.parse_header(read_object(source, ref))
    path = f"/studies/{ref.study_uid}/series/{ref.series_uid}/instances/{ref.sop_instance_uid}"
    return metadata.encode_instance(ds, path, ref.transfer_syntax)


def metadata_all(
    source: DicomwebSource,
    refs: Sequence[InstanceRef],
    cache: metadata.EncodedCache,
    pool: Executor,
) -> bytes:
    """Cached instances as they are; the others' header probes are read a few at a time in the
    shared pool (bucket latency, verified cache reads), parsed and encoded here: one worker
    thread per request."""
    docs: list[bytes | None] = [cache.get(r.version) for r in refs]
    missing = [r for r, d in zip(refs, docs, strict=True) if d is None]
    probes = stream.read_ahead(missing, lambda r: read_object(source, r, True), pool)
    fresh = iter([metadata_one(source, r, p) for r, p in zip(missing, probes, strict=True)])
    out = []
    for ref, doc in zip(refs, docs, strict=True):
        if doc is None:
            doc = next(fresh)
            cache.put(ref.version, doc)
        out.append(doc)
    return b"[" + b",".join(out) + b"]"


def pick(refs: Sequence[InstanceRef]) -> InstanceRef:
    """One instance, or for a study/series thumbnail the middle image of its first series."""
    first = [r for r in refs if r.series_uid == refs[0].series_uid]
    return first[len(first) // 2]


def dataset(source: DicomwebSource, ref: InstanceRef) -> Dataset:
    data = read_object(source, ref)
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise InvalidDataset(f"stored object is not readable DICOM: {exc}") from exc


def render_one(
    source: DicomwebSource, ref: InstanceRef, frame: int, params: render.RenderParams, size: int
) -> bytes:
    return render.render(dataset(source, ref), frame, params, size)


def rendered_each(
    source: DicomwebSource,
    refs: Sequence[InstanceRef],
    params: render.RenderParams,
    pool: Executor,
) -> Iterator[bytes]:
    """One rendered image (first frame) per instance, in order, rendered a few at a time in the
    pool; instances without pixel data (an SR, a document, an undecodable image) are left out."""

    def one(ref: InstanceRef) -> bytes:
        try:
            return render_one(source, ref, 1, params, 0)
        except (NotFound, NoConversion):
            return b""

    return (img for img in stream.read_ahead(refs, one, pool) if img)
