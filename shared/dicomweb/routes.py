"""The DICOMweb routes of both sides: parse the request, call the side's source in a worker
thread, answer. The cloud API and the edge mount these same handlers.

A side supplies a `Side` (its `DicomwebSource` per request, with the caller's scope applied
inside; its public base URL; how a request's audit record learns what was done; its limits) with
`attach(app, side)`, and adds `ROUTES` to its own route table, mapping each route's `Access`
(read: QIDO/WADO, write: STOW) to its own access rule. Authentication, the access rules, the
audit records themselves and error rendering (`PacsError` -> problem+json) stay with the side's
middleware; these handlers raise `PacsError`s.

Per app there is one bounded pool for instance reads and conversions (a request never starts
threads of its own) and one cache of encoded instance metadata.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
from collections.abc import Awaitable, Callable, Generator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from aiohttp import web

from shared.dicomweb import (
    frames,
    media,
    metadata,
    multipart,
    qido,
    render,
    service,
    stream,
    urls,
    zipstream,
)
from shared.dicomweb import stow as dw_stow
from shared.dicomweb.source import DicomwebSource, InstanceRef
from shared.errors import BadRequest, NoConversion, NotFound, PayloadTooLarge

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DICOM_JSON = "application/dicom+json"
ROOT = "/dicomweb"
READ_THREADS = 16  # object reads (and conversions) of every WADO request share this pool
METADATA_CACHE_BYTES = 64 * 1024**2  # encoded instance headers kept per process


def _nothing(request: web.Request) -> None:
    return None


@dataclass(frozen=True)
class Side:
    """What one side supplies to the shared routes."""

    source: Callable[[web.Request], DicomwebSource]  # per request, the caller's scope inside
    base_url: Callable[[web.Request], str]  # the public DICOMweb root for URLs in answers
    note: Callable[[web.Request, str, str], None]  # (request, audit detail, study UIDs or "")
    max_results: int  # QIDO answers at most this many (a Warning says more exist)
    spool_dir: Path  # STOW parts are spooled here (the edge: its cache filesystem)
    matchable: Mapping[str, frozenset[str]] = dataclasses.field(
        default_factory=lambda: qido.MATCHABLE
    )
    max_body_bytes: int = 0  # STOW body limit (0: none)
    max_part_bytes: int = 0  # STOW part limit (0: none)
    limit_name: str = "the body limit"  # the setting named when a limit is exceeded
    before_stow: Callable[[web.Request], None] = _nothing  # a side's extra check (raises)


SIDE = web.AppKey("dicomweb_side", Side)
READ_POOL = web.AppKey("dicomweb_read_pool", ThreadPoolExecutor)
METADATA_CACHE = web.AppKey("dicomweb_metadata_cache", metadata.EncodedCache)


def attach(app: web.Application, side: Side, *, cache_bytes: int = METADATA_CACHE_BYTES) -> None:
    """Per app: the side, one bounded pool for object reads and the metadata cache."""
    app[SIDE] = side
    app[READ_POOL] = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="dicomweb-read")
    app[METADATA_CACHE] = metadata.EncodedCache(cache_bytes)

    async def close(app: web.Application) -> None:
        app[READ_POOL].shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(close)


def public_root(
    request: web.Request, trusted: tuple[urls.Network, ...] = (), configured: str = ""
) -> str:
    """The public DICOMweb root for URLs in answers (`urls.public_base` decides: a configured
    base URL, else trusted proxies' headers, else the request itself)."""
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    origin = urls.RequestOrigin(
        scheme=request.scheme,
        host=request.headers.get("Host"),
        local_port=sock[1] if isinstance(sock, tuple) else None,
        local_host=sock[0] if isinstance(sock, tuple) else "localhost",
        peer=request.remote,
        headers=request.headers,
    )
    return urls.public_base(origin, trusted, configured) + ROOT


def _json(data: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode(), status=status, content_type=content_type
    )


def _accept(request: web.Request) -> list[media.MediaRange]:
    return media.parse_accept(request.headers.get("Accept"))


# ---- QIDO-RS ------------------------------------------------------------------------------------


async def _qido(request: web.Request, level: str) -> web.Response:
    side, mi = request.app[SIDE], request.match_info
    path_uids = {}
    if "study" in mi:
        path_uids["StudyInstanceUID"] = mi["study"]
    if "series" in mi:
        path_uids["SeriesInstanceUID"] = mi["series"]
    q = qido.parse(level, list(request.query.items()), path_uids, side.max_results, side.matchable)
    # one row more than asked for says whether more results exist
    probe = dataclasses.replace(q, limit=q.limit + 1)
    rows = await asyncio.to_thread(side.source(request).search, probe)
    side.note(request, f"QIDO {level.lower()} results={min(len(rows), q.limit)}", "")
    warnings = list(q.warnings)
    if len(rows) > q.limit:
        warnings.append(qido.MORE_WARNING)
    if not rows:
        resp = web.Response(status=204)
    else:
        base = side.base_url(request)
        body = [qido.render(level, r, base) for r in rows[: q.limit]]
        resp = _json(body, content_type=DICOM_JSON)
    for w in warnings:
        resp.headers.add("Warning", w)
    return resp


async def qido_studies(request: web.Request) -> web.Response:
    return await _qido(request, qido.STUDY)


async def qido_series(request: web.Request) -> web.Response:
    return await _qido(request, qido.SERIES)


async def qido_instances(request: web.Request) -> web.Response:
    return await _qido(request, qido.INSTANCE)


# ---- WADO-RS ------------------------------------------------------------------------------------


def _instances(source: DicomwebSource, mi: Mapping[str, str]) -> list[InstanceRef]:
    """The in-scope instances a WADO URL names, in series/instance order; NotFound if none."""
    qido.check_uids(mi["study"], *(mi[k] for k in ("series", "instance") if k in mi))
    out = source.instances(mi["study"], mi.get("series"), mi.get("instance"))
    if not out:
        raise NotFound("no such study, series or instance")
    return out


async def _refs(request: web.Request) -> tuple[DicomwebSource, list[InstanceRef]]:
    source = request.app[SIDE].source(request)
    return source, await asyncio.to_thread(_instances, source, request.match_info)


async def _pump(resp: web.StreamResponse, segments: Generator[bytes, None, None]) -> None:
    """Write segments produced by a worker thread, the next one read while this one is sent."""
    nxt = asyncio.ensure_future(asyncio.to_thread(next, segments, None))
    try:
        while (segment := await nxt) is not None:
            nxt = asyncio.ensure_future(asyncio.to_thread(next, segments, None))
            await resp.write(segment)
    finally:
        if not nxt.done():
            await asyncio.wait([nxt])
        await asyncio.to_thread(segments.close)


async def wado_retrieve(request: web.Request) -> web.StreamResponse:
    """Instances as multipart/related application/dicom, in the negotiated transfer syntax,
    streamed (never a study in memory); or one ZIP when asked for (shared/dicomweb/zipstream)."""
    if zipstream.wants_zip(request.headers.get("Accept"), request.query.get("accept")):
        return await _zip(request)
    side, ranges = request.app[SIDE], _accept(request)
    source, refs = await _refs(request)
    targets = media.negotiate_instances(ranges, {r.transfer_syntax for r in refs})
    parts = stream.plan(refs, targets)
    converted = sum(1 for p in parts if not p.as_is)
    side.note(request, f"WADO instances={len(refs)} converted={converted}", "")
    boundary = multipart.new_boundary()
    resp = web.StreamResponse(
        headers={"Content-Type": multipart.content_type(boundary, media.DICOM)}
    )
    length = stream.content_length(parts, boundary)
    if length is not None:
        resp.content_length = length
    await resp.prepare(request)
    pool = request.app[READ_POOL]
    await _pump(resp, stream.segments(parts, boundary, source.open, pool))
    await resp.write_eof()
    return resp


async def _zip(request: web.Request) -> web.StreamResponse:
    source, refs = await _refs(request)
    request.app[SIDE].note(request, f"WADO zip instances={len(refs)}", "")
    resp = web.StreamResponse(headers=zipstream.headers(refs[0].study_uid))
    await resp.prepare(request)
    await _pump(resp, zipstream.segments(refs, source.open, request.app[READ_POOL]))
    await resp.write_eof()
    return resp


async def wado_metadata(request: web.Request) -> web.Response:
    side = request.app[SIDE]
    if not media.accepts_json(_accept(request)):
        raise NoConversion("metadata is served as application/dicom+json only")
    source, refs = await _refs(request)
    cache, pool = request.app[METADATA_CACHE], request.app[READ_POOL]
    body = await asyncio.to_thread(service.metadata_all, source, refs, cache, pool)
    side.note(request, f"WADO metadata instances={len(refs)}", "")
    base = side.base_url(request)
    return web.Response(body=metadata.with_base(body, base), content_type=DICOM_JSON)


def _multipart(parts: list[bytes], part_type: str, media_type: str) -> web.Response:
    boundary = multipart.new_boundary()
    return web.Response(
        body=multipart.body([(part_type, p) for p in parts], boundary),
        headers={"Content-Type": multipart.content_type(boundary, media_type)},
    )


async def wado_frames(request: web.Request) -> web.Response:
    numbers = frames.parse_frame_numbers(request.match_info["frames"])
    ranges = _accept(request)
    source, refs = await _refs(request)
    ref = service.pick(refs)
    target = media.negotiate_frames(ranges, ref.transfer_syntax)
    ds = await asyncio.to_thread(service.dataset, source, ref)
    data = await asyncio.to_thread(frames.extract, ds, numbers, target)
    media_type, part = frames.frames_part_type(target)
    request.app[SIDE].note(request, f"WADO frames={len(numbers)} transfer_syntax={target}", "")
    return _multipart(data, part, media_type)


async def wado_bulkdata(request: web.Request) -> web.Response:
    if not media.accepts_bulk(_accept(request)):
        raise NoConversion("bulk data is served as application/octet-stream parts")
    source, refs = await _refs(request)
    ds = await asyncio.to_thread(service.dataset, source, service.pick(refs))
    value = frames.bulk_value(ds, request.match_info["tag"])
    request.app[SIDE].note(request, f"WADO bulkdata tag={request.match_info['tag'][:8]}", "")
    return _multipart([value], media.OCTET_STREAM, media.OCTET_STREAM)


async def _rendered(request: web.Request, thumbnail: bool) -> web.StreamResponse:
    mi = request.match_info
    media_type = media.negotiate_rendered(_accept(request))
    params = render.parse_params(request.query, media_type)
    frame = 1
    if "frames" in mi:
        frame = frames.parse_frame_numbers(mi["frames"])[0]
    size = render.THUMBNAIL_PX if thumbnail else 0
    source, refs = await _refs(request)
    what = "thumbnail" if thumbnail else "rendered"
    request.app[SIDE].note(request, f"WADO {what} instances={len(refs)}", "")
    if thumbnail or "instance" in mi:
        ref = service.pick(refs)
        data = await asyncio.to_thread(service.render_one, source, ref, frame, params, size)
        return web.Response(body=data, content_type=media_type)
    return await _rendered_many(request, source, refs, params)


async def _rendered_many(
    request: web.Request,
    source: DicomwebSource,
    refs: list[InstanceRef],
    params: render.RenderParams,
) -> web.StreamResponse:
    """A rendered study or series: multipart/related, one rendered image per instance (its
    first frame); instances without pixel data are left out."""
    images = service.rendered_each(source, refs, params, request.app[READ_POOL])
    first = await asyncio.to_thread(next, images, None)
    if first is None:
        raise NotFound("nothing in this study or series can be rendered")
    boundary = multipart.new_boundary()
    resp = web.StreamResponse(
        headers={"Content-Type": multipart.content_type(boundary, params.media_type)}
    )
    await resp.prepare(request)
    await resp.write(multipart.part_header(boundary, params.media_type, True) + first)
    while (img := await asyncio.to_thread(next, images, None)) is not None:
        await resp.write(multipart.part_header(boundary, params.media_type, False) + img)
    await resp.write(multipart.closing(boundary))
    await resp.write_eof()
    return resp


async def wado_rendered(request: web.Request) -> web.StreamResponse:
    return await _rendered(request, thumbnail=False)


async def wado_thumbnail(request: web.Request) -> web.StreamResponse:
    return await _rendered(request, thumbnail=True)


# ---- STOW-RS ------------------------------------------------------------------------------------


async def stow(request: web.Request) -> web.Response:
    """Parts are parsed by the shared streaming reader (any boundary a peer sends, malformed
    bodies are 400), spooled to temp files as they arrive and stored one by one through the
    side's one acceptance path; each spooled part is removed once stored."""
    side = request.app[SIDE]
    side.before_stow(request)
    limit = side.max_body_bytes
    if limit and request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body over {side.limit_name} ({limit})")
    boundary = multipart.stow_boundary(request.headers.get("Content-Type"))
    study = request.match_info.get("study")
    if study is not None:
        qido.check_uids(study)
    source = side.source(request)
    side.spool_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    with tempfile.TemporaryDirectory(dir=side.spool_dir, prefix="stow-") as spool:
        parts = dw_stow.spooled_parts(
            request.content.iter_any(),
            boundary,
            Path(spool),
            max_body_bytes=limit,
            max_part_bytes=side.max_part_bytes,
            limit_name=side.limit_name,
        )
        async for path in parts:
            outcomes.append(await asyncio.to_thread(source.store, path, study))
            path.unlink(missing_ok=True)
    if not outcomes:
        raise BadRequest("the request contained no parts")
    detail = await asyncio.to_thread(source.stored, outcomes)
    studies = sorted({o.study_uid for o in outcomes if o.study_uid})
    side.note(request, detail, ",".join(studies)[:200])
    body = dw_stow.response_json(side.base_url(request), outcomes, study)
    return _json(body, status=dw_stow.status(outcomes), content_type=DICOM_JSON)


# ---- the route table ----------------------------------------------------------------------------


class Access(StrEnum):
    """What a route does with patient data; each side maps it to its own access rule."""

    READ = "read"  # QIDO and WADO
    WRITE = "write"  # STOW


S = "/studies/{study}"
SE = S + "/series/{series}"
IN = SE + "/instances/{instance}"

# method, path under ROOT, handler, access, audit action
ROUTES: list[tuple[str, str, Handler, Access, str]] = [
    ("GET", "/studies", qido_studies, Access.READ, "qido"),
    ("GET", "/series", qido_series, Access.READ, "qido"),
    ("GET", "/instances", qido_instances, Access.READ, "qido"),
    ("GET", S + "/series", qido_series, Access.READ, "qido"),
    ("GET", S + "/instances", qido_instances, Access.READ, "qido"),
    ("GET", SE + "/instances", qido_instances, Access.READ, "qido"),
    ("GET", S, wado_retrieve, Access.READ, "wado"),
    ("GET", SE, wado_retrieve, Access.READ, "wado"),
    ("GET", IN, wado_retrieve, Access.READ, "wado"),
    ("GET", S + "/metadata", wado_metadata, Access.READ, "wado-metadata"),
    ("GET", SE + "/metadata", wado_metadata, Access.READ, "wado-metadata"),
    ("GET", IN + "/metadata", wado_metadata, Access.READ, "wado-metadata"),
    ("GET", IN + "/frames/{frames}", wado_frames, Access.READ, "wado-frames"),
    ("GET", IN + "/frames/{frames}/rendered", wado_rendered, Access.READ, "wado-rendered"),
    ("GET", IN + "/rendered", wado_rendered, Access.READ, "wado-rendered"),
    ("GET", SE + "/rendered", wado_rendered, Access.READ, "wado-rendered"),
    ("GET", S + "/rendered", wado_rendered, Access.READ, "wado-rendered"),
    ("GET", IN + "/thumbnail", wado_thumbnail, Access.READ, "wado-thumbnail"),
    ("GET", S + "/thumbnail", wado_thumbnail, Access.READ, "wado-thumbnail"),
    ("GET", SE + "/thumbnail", wado_thumbnail, Access.READ, "wado-thumbnail"),
    ("GET", IN + "/bulkdata/{tag}", wado_bulkdata, Access.READ, "wado-bulkdata"),
    ("POST", "/studies", stow, Access.WRITE, "stow"),
    ("POST", S, stow, Access.WRITE, "stow"),
]
