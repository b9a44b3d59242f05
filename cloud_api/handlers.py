"""Route handlers: parse the request, call one service function in a worker thread, answer.

Handlers never run SQL: they call the catalog (`cloud_api.catalog.Catalog`). Site scope is
applied by the catalog's search (`Principal.site_filter`), so a reader of site A never learns
that an instance of site B exists: out-of-scope studies are simply not found (404 / 204).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import json
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Generator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from aiohttp import web
from pydicom.dataset import Dataset

from cloud_api import catalog, qido
from cloud_api.auth import ROLES, Need, Principal
from cloud_api.stow import STOW_SITE, StowOutcome, append_catalog, store_part
from shared.dicomweb import frames, media, metadata, multipart, render, stream, urls
from shared.dicomweb import stow as dw_stow
from shared.dicomweb.source import InstanceRef
from shared.errors import (
    BadRequest,
    InvalidDataset,
    InvalidField,
    NoConversion,
    NotAuthorized,
    NotFound,
    PayloadTooLarge,
)
from shared.keys import check_site, restore_key, restore_status_key, restores_prefix
from shared.restore import (
    RestorePhase,
    RestoreRequest,
    RestoreStatus,
    check_restore_id,
    new_restore_id,
)

if TYPE_CHECKING:
    from cloud_api.app import Services

PRINCIPAL = web.RequestKey("principal", Principal)
AUDIT = web.RequestKey("audit", dict)  # what the audit record should say about this request
DICOM_JSON = "application/dicom+json"


def _svc(request: web.Request) -> Services:
    from cloud_api.app import SERVICES

    return request.app[SERVICES]


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def _base_url(request: web.Request) -> str:
    """The public DICOMweb root for URLs in responses (shared/dicomweb/urls.py decides)."""
    cfg = _svc(request).cfg
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    origin = urls.RequestOrigin(
        scheme=request.scheme,
        host=request.headers.get("Host"),
        local_port=sock[1] if isinstance(sock, tuple) else None,
        local_host=sock[0] if isinstance(sock, tuple) else "localhost",
        peer=request.remote,
        headers=request.headers,
    )
    trusted = _networks(tuple(cfg.trusted_proxies))
    return urls.public_base(origin, trusted, cfg.public_base_url) + "/dicomweb"


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[urls.Network, ...]:
    return urls.parse_networks(cidrs)


def _json(data: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode(), status=status, content_type=content_type
    )


# ---- QIDO-RS ------------------------------------------------------------------------------------


async def _qido(request: web.Request, level: str) -> web.Response:
    svc, p = _svc(request), _principal(request)
    path_uids = {}
    if "study" in request.match_info:
        path_uids["StudyInstanceUID"] = request.match_info["study"]
    if "series" in request.match_info:
        path_uids["SeriesInstanceUID"] = request.match_info["series"]
    q = qido.parse_query(
        level, list(request.query.items()), path_uids, svc.cfg.query_max_results, p.site_filter()
    )
    # one row more than asked for says whether more results exist
    probe = dataclasses.replace(q.search, limit=q.search.limit + 1)
    rows = await asyncio.to_thread(svc.catalog.search, probe)
    request[AUDIT]["detail"] = f"QIDO {level.lower()} results={len(rows)}"
    warnings = list(q.warnings)
    if len(rows) > q.search.limit:
        warnings.append(qido.MORE_WARNING)
    if not rows:
        resp = web.Response(status=204)
    else:
        base = _base_url(request)
        body = [qido.render(level, r, base) for r in rows[: q.search.limit]]
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


def _instances(request: web.Request) -> list[catalog.InstanceRef]:
    """The in-scope instances a WADO URL names, in series/instance order; NotFound if none."""
    svc, p = _svc(request), _principal(request)
    mi = request.match_info
    qido.check_uids(mi["study"], *(mi[k] for k in ("series", "instance") if k in mi))
    out = svc.catalog.instances(mi["study"], mi.get("series"), mi.get("instance"), p.site_filter())
    if not out:
        raise NotFound("no such study, series or instance")
    return out


# ---- WADO-RS: the shared DICOMweb (shared/dicomweb) over the catalog and the bucket -----------

READ_POOL = web.AppKey("read_pool", ThreadPoolExecutor)
READ_THREADS = 16  # object reads (and conversions) of every WADO request share this pool
METADATA_CACHE = web.AppKey("metadata_cache", metadata.EncodedCache)
METADATA_CACHE_BYTES = 64 * 1024**2  # encoded instance headers kept per replica


def attach_dicomweb(app: web.Application) -> None:
    """Per app: one bounded pool for object reads (a request never starts threads of its own)
    and the cache of encoded instance metadata."""
    app[READ_POOL] = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="dicomweb-read")
    app[METADATA_CACHE] = metadata.EncodedCache(METADATA_CACHE_BYTES)

    async def close(app: web.Application) -> None:
        app[READ_POOL].shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(close)


def _ref(row: catalog.InstanceRef) -> InstanceRef:
    """A catalog instance as the shared DICOMweb code sees it (the object key locates it)."""
    return InstanceRef(
        study_uid=row.study_uid,
        series_uid=row.series_uid,
        sop_instance_uid=row.sop_instance_uid,
        transfer_syntax=row.transfer_syntax or media.EXPLICIT_LE,
        size=row.size,
        locator=row.object_key,
        sop_class_uid=row.sop_class_uid,
    )


def _refs(request: web.Request) -> list[InstanceRef]:
    return [_ref(r) for r in _instances(request)]


def _opener(svc: Services) -> stream.Opener:
    return lambda ref: svc.store.open(ref.locator)


def _accept(request: web.Request) -> list[media.MediaRange]:
    return media.parse_accept(request.headers.get("Accept"))


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
    streamed from the store (never a study in memory)."""
    svc, ranges = _svc(request), _accept(request)
    refs = await asyncio.to_thread(_refs, request)
    targets = media.negotiate_instances(ranges, {r.transfer_syntax for r in refs})
    parts = stream.plan(refs, targets)
    converted = sum(1 for p in parts if not p.as_is)
    request[AUDIT]["detail"] = f"WADO instances={len(refs)} converted={converted}"
    boundary = multipart.new_boundary()
    resp = web.StreamResponse(
        headers={"Content-Type": multipart.content_type(boundary, media.DICOM)}
    )
    length = stream.content_length(parts, boundary)
    if length is not None:
        resp.content_length = length
    await resp.prepare(request)
    pool = request.app[READ_POOL]
    await _pump(resp, stream.segments(parts, boundary, _opener(svc), pool))
    await resp.write_eof()
    return resp


def _read_object(svc: Services, ref: InstanceRef, header_only: bool) -> bytes:
    if header_only:
        with svc.store.open(ref.locator, 0, metadata.HEADER_PROBE_BYTES) as fh:
            return fh.read()
    with svc.store.open(ref.locator) as fh:
        return fh.read()


def _metadata_one(svc: Services, ref: InstanceRef, probe: bytes) -> bytes:
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
        ds = metadata.parse_header(_read_object(svc, ref, header_only=False))
    path = f"/studies/{ref.study_uid}/series/{ref.series_uid}/instances/{ref.sop_instance_uid}"
    return metadata.encode_instance(ds, path, ref.transfer_syntax)


def _metadata_all(
    svc: Services, refs: list[InstanceRef], cache: metadata.EncodedCache, pool: Executor
) -> bytes:
    """Cached instances as they are; the others' header probes are read a few at a time in the
    shared pool (bucket latency), parsed and encoded here: one worker thread per request."""
    docs: list[bytes | None] = [cache.get((r.locator, r.size)) for r in refs]
    missing = [r for r, d in zip(refs, docs, strict=True) if d is None]
    probes = stream.read_ahead(missing, lambda r: _read_object(svc, r, True), pool)
    fresh = iter([_metadata_one(svc, r, p) for r, p in zip(missing, probes, strict=True)])
    out = []
    for ref, doc in zip(refs, docs, strict=True):
        if doc is None:
            doc = next(fresh)
            cache.put((ref.locator, ref.size), doc)
        out.append(doc)
    return b"[" + b",".join(out) + b"]"


async def wado_metadata(request: web.Request) -> web.Response:
    svc = _svc(request)
    if not media.accepts_json(_accept(request)):
        raise NoConversion("metadata is served as application/dicom+json only")
    refs = await asyncio.to_thread(_refs, request)
    cache, pool = request.app[METADATA_CACHE], request.app[READ_POOL]
    body = await asyncio.to_thread(_metadata_all, svc, refs, cache, pool)
    request[AUDIT]["detail"] = f"WADO metadata instances={len(refs)}"
    return web.Response(body=metadata.with_base(body, _base_url(request)), content_type=DICOM_JSON)


def _pick(refs: list[InstanceRef]) -> InstanceRef:
    """One instance, or for a study/series thumbnail the middle image of its first series."""
    first = [r for r in refs if r.series_uid == refs[0].series_uid]
    return first[len(first) // 2]


def _dataset(svc: Services, ref: InstanceRef) -> Dataset:
    data = _read_object(svc, ref, header_only=False)
    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise InvalidDataset(f"stored object is not readable DICOM: {exc}") from exc


def _multipart(parts: list[bytes], part_type: str, media_type: str) -> web.Response:
    boundary = multipart.new_boundary()
    return web.Response(
        body=multipart.body([(part_type, p) for p in parts], boundary),
        headers={"Content-Type": multipart.content_type(boundary, media_type)},
    )


async def wado_frames(request: web.Request) -> web.Response:
    svc = _svc(request)
    numbers = frames.parse_frame_numbers(request.match_info["frames"])
    ranges = _accept(request)
    ref = _pick(await asyncio.to_thread(_refs, request))
    target = media.negotiate_frames(ranges, ref.transfer_syntax)
    ds = await asyncio.to_thread(_dataset, svc, ref)
    data = await asyncio.to_thread(frames.extract, ds, numbers, target)
    media_type, part = frames.frames_part_type(target)
    request[AUDIT]["detail"] = f"WADO frames={len(numbers)} transfer_syntax={target}"
    return _multipart(data, part, media_type)


async def wado_bulkdata(request: web.Request) -> web.Response:
    svc = _svc(request)
    if not media.accepts_bulk(_accept(request)):
        raise NoConversion("bulk data is served as application/octet-stream parts")
    ref = _pick(await asyncio.to_thread(_refs, request))
    ds = await asyncio.to_thread(_dataset, svc, ref)
    value = frames.bulk_value(ds, request.match_info["tag"])
    return _multipart([value], media.OCTET_STREAM, media.OCTET_STREAM)


def _render_one(svc: Services, ref: InstanceRef, frame: int, params: Any, size: int) -> bytes:
    return render.render(_dataset(svc, ref), frame, params, size)


async def _rendered(request: web.Request, thumbnail: bool) -> web.StreamResponse:
    svc, mi = _svc(request), request.match_info
    media_type = media.negotiate_rendered(_accept(request))
    params = render.parse_params(request.query, media_type)
    frame = 1
    if "frames" in mi:
        frame = frames.parse_frame_numbers(mi["frames"])[0]
    size = render.THUMBNAIL_PX if thumbnail else 0
    refs = await asyncio.to_thread(_refs, request)
    if thumbnail or "instance" in mi:
        ref = _pick(refs)
        data = await asyncio.to_thread(_render_one, svc, ref, frame, params, size)
        return web.Response(body=data, content_type=media_type)
    return await _rendered_many(request, refs, params)


async def _rendered_many(
    request: web.Request, refs: list[InstanceRef], params: render.RenderParams
) -> web.StreamResponse:
    """A rendered study or series: multipart/related, one rendered image per instance (its
    first frame); instances without pixel data are left out."""
    svc, pool = _svc(request), request.app[READ_POOL]

    def one(ref: InstanceRef) -> bytes:
        try:
            return _render_one(svc, ref, 1, params, 0)
        except (NotFound, NoConversion):
            return b""  # an SR, a document, an undecodable image: not rendered

    images = (img for img in stream.read_ahead(refs, one, pool) if img)
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
    bodies are 400), spooled to temp files as they arrive, stored and cataloged one by one."""
    svc, p = _svc(request), _principal(request)
    p.require(Need.WRITE, STOW_SITE)
    limit = svc.cfg.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body over cloud.max_body_bytes ({limit})")
    boundary = multipart.stow_boundary(request.headers.get("Content-Type"))
    study = request.match_info.get("study")
    reveal = p.all_sites and p.may(Need.READ)  # else: no existence oracle (stow.py)
    tmp_dir = Path(svc.cfg.data_dir) / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[StowOutcome] = []
    with tempfile.TemporaryDirectory(dir=tmp_dir) as spool:
        parts = _spooled_parts(request.content.iter_any(), boundary, Path(spool), limit)
        async for path in parts:
            outcomes.append(
                await asyncio.to_thread(store_part, svc.store, path, study, reveal_existing=reveal)
            )
    if not outcomes:
        raise BadRequest("the request contained no parts")
    rows = [o.row for o in outcomes if o.row is not None]
    kept = [o for o in outcomes if o.kept_as]
    if rows:
        cursor = (await asyncio.to_thread(svc.catalog.cursors)).get(STOW_SITE, "")
        await asyncio.to_thread(append_catalog, svc.store, rows, cursor)
        journal = [r.to_json() for r in rows]
        await asyncio.to_thread(svc.catalog.apply, STOW_SITE, journal)  # visible at once to QIDO
    studies = sorted({o.study_uid for o in outcomes if o.study_uid})
    request[AUDIT]["study_uid"] = ",".join(studies)[:200]
    ok = sum(o.stored for o in outcomes)
    request[AUDIT]["detail"] = f"STOW stored={len(rows)} failed={len(outcomes) - ok}" + (
        f" conflicts_kept={len(kept)}" if kept else ""
    )
    body = dw_stow.response_json(_base_url(request), outcomes, study)
    return _json(body, status=dw_stow.status(outcomes), content_type=DICOM_JSON)


async def _spooled_parts(
    chunks: AsyncIterable[bytes], boundary: str, spool: Path, limit: int
) -> AsyncIterator[Path]:
    """Each complete part as a temp file; the body limit is checked while reading."""
    parser = multipart.MultipartParser(boundary)
    received, fh, path, n = 0, None, spool / "0.dcm", 0
    done: list[Path] = []

    def apply(events: list[multipart.Event]) -> None:
        nonlocal fh, path, n
        for ev in events:
            if isinstance(ev, multipart.PartStart):
                n += 1
                path = spool / f"{n}.dcm"
                fh = path.open("wb")
            elif isinstance(ev, multipart.PartEnd):
                assert fh is not None
                fh.close()
                fh = None
                done.append(path)
            else:
                assert fh is not None
                fh.write(ev)

    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"request body over cloud.max_body_bytes ({limit})")
            await asyncio.to_thread(apply, parser.feed(chunk))
            while done:
                yield done.pop(0)
        await asyncio.to_thread(apply, parser.finish())
        while done:
            yield done.pop(0)
    finally:
        if fh is not None:
            fh.close()


# ---- admin API ----------------------------------------------------------------------------------


async def api_tokens(request: web.Request) -> web.Response:
    svc = _svc(request)
    recs = await asyncio.to_thread(svc.tokens.list)
    return _json(
        [
            {
                "name": r.name,
                "role": r.role,
                "sites": r.sites,
                "created_at": r.created_at,
                "revoked_at": r.revoked_at,
            }
            for r in recs
        ]
    )


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("the body must be JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


async def api_token_create(request: web.Request) -> web.Response:
    """Admin: a new token; its secret is in this answer only (stored as a hash)."""
    svc = _svc(request)
    body = await _json_body(request)
    name, role, sites = body.get("name"), body.get("role"), body.get("sites", [])
    if not isinstance(name, str) or not name.strip():
        raise InvalidField("name", "1-64 characters")
    if role not in ROLES:
        raise InvalidField("role", f"one of {', '.join(ROLES)}")
    if isinstance(sites, str):
        sites = [x.strip() for x in sites.split(",") if x.strip()]
    if not isinstance(sites, list) or not all(isinstance(x, str) for x in sites):
        raise InvalidField("sites", "a list of site names")
    for site in sites:
        if site != "*":
            check_site(site)
    token = await asyncio.to_thread(svc.tokens.create, name.strip(), role, sites)
    request[AUDIT]["detail"] = f"token created name={name.strip()} role={role} sites={sites}"
    return _json(
        {"name": name.strip(), "role": role, "sites": sorted(set(sites)), "token": token},
        status=201,
    )


async def api_token_revoke(request: web.Request) -> web.Response:
    svc = _svc(request)
    name = request.match_info["name"]
    await asyncio.to_thread(svc.tokens.revoke, name)
    request[AUDIT]["detail"] = f"token revoked name={name}"
    return _json({"revoked": name})


async def api_restore_create(request: web.Request) -> web.Response:
    svc, p = _svc(request), _principal(request)
    site = check_site(request.match_info["site"])
    p.require(Need.ADMIN, site)
    if site == STOW_SITE:
        raise BadRequest(f"site {STOW_SITE!r} holds STOW uploads to this API: no edge restores it")
    body: dict[str, Any] = {}
    if request.can_read_body:
        try:
            body = await request.json()
        except ValueError as exc:
            raise BadRequest("the body must be JSON") from exc
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
    days = body.get("prefetch_days")
    if days is not None and (not isinstance(days, int) or days < 0):
        raise BadRequest("prefetch_days must be a non-negative integer")
    req = RestoreRequest(new_restore_id(), site, time.time(), p.name, days)
    await asyncio.to_thread(
        svc.store.put, restore_key(site, req.id), req.to_bytes(), content_type="application/json"
    )
    request[AUDIT]["detail"] = f"restore requested site={site} id={req.id}"
    return _json(
        {
            "id": req.id,
            "site": site,
            "phase": RestorePhase.PENDING.value,
            "status_url": f"/api/sites/{site}/restores/{req.id}",
        },
        status=201,
    )


def _status(svc: Services, site: str, restore_id: str) -> dict[str, Any]:
    if svc.store.head(restore_key(site, restore_id)) is None:
        raise NotFound(f"no restore {restore_id} for site {site}")
    try:
        with svc.store.open(restore_status_key(site, restore_id)) as fh:
            return RestoreStatus.from_bytes(fh.read()).to_json()
    except NotFound:
        return {"id": restore_id, "site": site, "phase": RestorePhase.PENDING.value}


async def api_restore_get(request: web.Request) -> web.Response:
    svc, p = _svc(request), _principal(request)
    site = check_site(request.match_info["site"])
    p.require(Need.RESTORE_READ, site)
    rid = check_restore_id(request.match_info["restore_id"])
    return _json(await asyncio.to_thread(_status, svc, site, rid))


async def api_restore_list(request: web.Request) -> web.Response:
    svc, p = _svc(request), _principal(request)
    site = check_site(request.match_info["site"])
    if not p.may(Need.RESTORE_READ, site):
        raise NotAuthorized(f"token {p.name!r} may not read restores of site {site}")

    def collect() -> list[dict[str, Any]]:
        out = []
        for info in svc.store.list(restores_prefix(site)):
            name = info.key.rsplit("/", 1)[-1]
            if name.endswith(".json") and not name.endswith(".status.json"):
                out.append(_status(svc, site, name[: -len(".json")]))
        return out

    return _json(await asyncio.to_thread(collect))
