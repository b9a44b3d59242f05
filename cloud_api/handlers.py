"""Route handlers: parse the request, call one service function in a worker thread, answer.

Site scope is applied in SQL (`Principal.site_filter`), so a reader of site A never learns
that an instance of site B exists: out-of-scope studies are simply not found (404 / 204).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cloud_api import qido, wado
from cloud_api.auth import Need, Principal
from cloud_api.stow import STOW_SITE, StowOutcome, append_catalog, store_part
from shared.errors import (
    BadRequest,
    ChecksumMismatch,
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

CHUNK = 1024 * 1024
PRINCIPAL = web.RequestKey("principal", Principal)
AUDIT = web.RequestKey("audit", dict)  # what the audit record should say about this request
DICOM_JSON = "application/dicom+json"
HEADER_PROBE_BYTES = 64 * 1024
METADATA_CONCURRENCY = 8


def _svc(request: web.Request) -> Services:
    from cloud_api.app import SERVICES

    return request.app[SERVICES]


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}/dicomweb"


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
    sql, args = qido.build_sql(q)
    rows = await asyncio.to_thread(lambda: svc.index.reader().execute(sql, args).fetchall())
    request[AUDIT]["detail"] = f"QIDO {level.lower()} results={len(rows)}"
    if not rows:
        return web.Response(status=204)
    truncated = len(rows) > q.limit
    base = _base_url(request)
    body = [qido.render(level, r, base) for r in rows[: q.limit]]
    resp = _json(body, content_type=DICOM_JSON)
    if truncated:
        resp.headers["Warning"] = '299 hpacs "There are additional results that can be requested"'
    return resp


async def qido_studies(request: web.Request) -> web.Response:
    return await _qido(request, qido.STUDY)


async def qido_series(request: web.Request) -> web.Response:
    return await _qido(request, qido.SERIES)


async def qido_instances(request: web.Request) -> web.Response:
    return await _qido(request, qido.INSTANCE)


# ---- WADO-RS ------------------------------------------------------------------------------------


def _instances(request: web.Request) -> list[dict[str, Any]]:
    """The in-scope instances a WADO URL names, in series/instance order; NotFound if none."""
    svc, p = _svc(request), _principal(request)
    mi = request.match_info
    q = qido.Query(level=qido.INSTANCE, limit=10**9, sites=p.site_filter())
    q.filters["StudyInstanceUID"] = mi["study"]
    if "series" in mi:
        q.filters["SeriesInstanceUID"] = mi["series"]
    if "instance" in mi:
        q.filters["SOPInstanceUID"] = mi["instance"]
    for uid in q.filters.values():
        qido._match("", "uid", uid)  # validates the UIDs (BadRequest)
    sql, args = qido.build_sql(q)
    seen: set[str] = set()
    out = []
    for r in svc.index.reader().execute(sql, args):
        if r["sop_instance_uid"] in seen:
            continue  # the same instance cataloged by two sites: serve it once
        seen.add(r["sop_instance_uid"])
        out.append(dict(r))
    if not out:
        raise NotFound("no such study, series or instance")
    return out


def _check_accept(request: web.Request, part_type: str) -> None:
    accept = request.headers.get("Accept", "")
    if not accept or "*/*" in accept or "multipart/related" in accept:
        return
    raise web.HTTPNotAcceptable(text=f"this resource is multipart/related; type={part_type}")


async def wado_retrieve(request: web.Request) -> web.StreamResponse:
    """Instances as multipart/related application/dicom, streamed from the store.

    A worker thread reads objects into segments of about `SEGMENT` bytes (many small
    instances per write, a large one in several), the next segment is read while the current
    one is written, so memory stays bounded whatever the study size.
    """
    _check_accept(request, "application/dicom")
    svc = _svc(request)
    rows = await asyncio.to_thread(_instances, request)
    request[AUDIT]["detail"] = f"WADO instances={len(rows)}"
    boundary = wado.new_boundary()
    resp = web.StreamResponse(
        headers={"Content-Type": wado.multipart_content_type(boundary, "application/dicom")}
    )
    # The catalog knows every object's size, so the body length is known up front: a
    # Content-Length spares clients chunked decoding (slow in Python's http.client).
    resp.content_length = sum(
        len(wado.part_header(boundary, _part_type(r), i == 0)) + r["size"]
        for i, r in enumerate(rows)
    ) + len(wado.closing(boundary))
    await resp.prepare(request)
    segments = _segments(svc, rows, boundary)
    nxt = asyncio.ensure_future(asyncio.to_thread(next, segments, None))
    try:
        while (segment := await nxt) is not None:
            nxt = asyncio.ensure_future(asyncio.to_thread(next, segments, None))
            await resp.write(segment)
    finally:
        if not nxt.done():
            await asyncio.wait([nxt])
        segments.close()
    await resp.write_eof()
    return resp


SEGMENT = 4 * 1024 * 1024
SMALL_OBJECT = 8 * 1024 * 1024
READ_AHEAD = 8


def _part_type(row: dict[str, Any]) -> str:
    return f"application/dicom; transfer-syntax={row['transfer_syntax']}"


def _segments(
    svc: Services, rows: list[dict[str, Any]], boundary: str
) -> Generator[bytes, None, None]:
    """Multipart body segments. Objects up to SMALL_OBJECT are fetched READ_AHEAD at a time
    in parallel (a bucket's per-object latency would otherwise add up over a study); larger
    ones are streamed chunk by chunk. Memory stays within READ_AHEAD * SMALL_OBJECT + SEGMENT."""
    parts: list[bytes] = []
    size = 0
    # on file:// too: measured, the reads overlapping the event loop's writes beat one reader
    with ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="wado-read") as pool:
        pending: deque[Future[bytes] | None] = deque()
        queued = 0

        def fill() -> None:
            nonlocal queued
            while queued < len(rows) and len(pending) < READ_AHEAD:
                r = rows[queued]
                small = r["size"] <= SMALL_OBJECT
                pending.append(
                    pool.submit(_read_object, svc, r["object_key"], False) if small else None
                )
                queued += 1

        fill()
        for i, row in enumerate(rows):
            fut = pending.popleft()
            fill()
            parts.append(wado.part_header(boundary, _part_type(row), i == 0))
            got = 0
            if fut is not None:
                data = fut.result()
                parts.append(data)
                got = len(data)
                size += got
            else:
                with svc.store.open(row["object_key"]) as fh:
                    while chunk := fh.read(CHUNK):
                        parts.append(chunk)
                        size += len(chunk)
                        got += len(chunk)
                        if size >= SEGMENT:
                            yield b"".join(parts)
                            parts, size = [], 0
            if got != row["size"]:  # the announced length would be a lie: abort the response
                raise ChecksumMismatch(f"object {row['object_key']} is not the cataloged size")
            if size >= SEGMENT:
                yield b"".join(parts)
                parts, size = [], 0
    parts.append(wado.closing(boundary))
    yield b"".join(parts)


def _read_object(svc: Services, key: str, header_only: bool) -> bytes:
    if header_only:
        with svc.store.open(key, 0, HEADER_PROBE_BYTES) as fh:
            return fh.read()
    with svc.store.open(key) as fh:
        return fh.read()


def _metadata_one(svc: Services, row: dict[str, Any], base: str) -> dict[str, Any]:
    data = _read_object(svc, row["object_key"], header_only=True)
    try:
        ds = wado.parse_dataset(data, stop_before_pixels=True)
        if len(data) >= HEADER_PROBE_BYTES and "PixelData" not in ds and "Rows" not in ds:
            raise ValueError("header longer than the probe")
    except Exception:
        ds = wado.parse_dataset(_read_object(svc, row["object_key"], False), True)
    url = f"{base}/studies/{row['study_uid']}/series/{row['series_uid']}/instances/"
    return wado.metadata_json(ds, url + row["sop_instance_uid"])


async def wado_metadata(request: web.Request) -> web.Response:
    svc = _svc(request)
    rows = await asyncio.to_thread(_instances, request)
    base = _base_url(request)
    sem = asyncio.Semaphore(METADATA_CONCURRENCY)

    async def one(row: dict[str, Any]) -> dict[str, Any]:
        async with sem:
            return await asyncio.to_thread(_metadata_one, svc, row, base)

    body = await asyncio.gather(*(one(r) for r in rows))
    request[AUDIT]["detail"] = f"WADO metadata instances={len(rows)}"
    return _json(body, content_type=DICOM_JSON)


async def _dataset(request: web.Request) -> Any:
    svc = _svc(request)
    rows = await asyncio.to_thread(_instances, request)
    # one instance, or for a study/series thumbnail the middle image of its first series
    first = [r for r in rows if r["series_uid"] == rows[0]["series_uid"]]
    row = first[len(first) // 2]
    data = await asyncio.to_thread(_read_object, svc, row["object_key"], False)
    return await asyncio.to_thread(wado.parse_dataset, data)


def _multipart(parts: list[bytes], part_type: str, extra: str = "") -> web.Response:
    boundary = wado.new_boundary()
    body = bytearray()
    for i, p in enumerate(parts):
        body += wado.part_header(boundary, part_type + extra, i == 0)
        body += p
    body += wado.closing(boundary)
    return web.Response(
        body=bytes(body),
        headers={"Content-Type": wado.multipart_content_type(boundary, part_type)},
    )


async def wado_frames(request: web.Request) -> web.Response:
    numbers = wado.parse_frame_numbers(request.match_info["frames"])
    ds = await _dataset(request)
    frames, media, ts = await asyncio.to_thread(wado.extract_frames, ds, numbers)
    extra = f"; transfer-syntax={ts}" if media == "application/octet-stream" else ""
    return _multipart(frames, media, extra)


async def wado_bulkdata(request: web.Request) -> web.Response:
    ds = await _dataset(request)
    value = await asyncio.to_thread(wado.bulk_value, ds, request.match_info["tag"])
    return _multipart([value], "application/octet-stream")


async def _rendered(request: web.Request, max_size: int) -> web.Response:
    media = wado.choose_image_type(request.headers.get("Accept", ""))
    window = wado.parse_window(request.query.get("window"))
    frame = 1
    if "frames" in request.match_info:
        frame = wado.parse_frame_numbers(request.match_info["frames"])[0]
    if "viewport" in request.query:
        try:
            max_size = max(int(v) for v in request.query["viewport"].split(",")[:2])
        except ValueError as exc:
            raise BadRequest("viewport must be width,height") from exc
    quality = int(request.query.get("quality", "90") or 90)
    ds = await _dataset(request)
    data = await asyncio.to_thread(wado.render, ds, frame, window, media, max_size, quality)
    return web.Response(body=data, content_type=media)


async def wado_rendered(request: web.Request) -> web.Response:
    return await _rendered(request, 0)


async def wado_thumbnail(request: web.Request) -> web.Response:
    return await _rendered(request, 128)


# ---- STOW-RS ------------------------------------------------------------------------------------


async def stow(request: web.Request) -> web.Response:
    """Parts are spooled to temp files as they arrive, then stored and cataloged one by one."""
    svc, p = _svc(request), _principal(request)
    p.require(Need.WRITE, STOW_SITE)
    limit = svc.cfg.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body over cloud.max_body_bytes ({limit})")
    if request.content_type != "multipart/related":
        raise web.HTTPUnsupportedMediaType(text="STOW-RS takes multipart/related")
    study = request.match_info.get("study")
    reveal = p.all_sites and p.may(Need.READ)  # else: no existence oracle (stow.py)
    tmp_dir = Path(svc.cfg.data_dir) / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[StowOutcome] = []
    received = 0
    reader = await request.multipart()
    with tempfile.TemporaryDirectory(dir=tmp_dir) as spool:
        n = 0
        while (part := await reader.next()) is not None:
            n += 1
            path = Path(spool) / f"{n}.dcm"
            with path.open("wb") as fh:
                while chunk := await part.read_chunk(CHUNK):  # type: ignore[union-attr]
                    received += len(chunk)
                    if received > limit:
                        raise PayloadTooLarge(f"request body over cloud.max_body_bytes ({limit})")
                    await asyncio.to_thread(fh.write, chunk)
            outcomes.append(
                await asyncio.to_thread(store_part, svc.store, path, study, reveal_existing=reveal)
            )
    rows = [o.row for o in outcomes if o.row is not None]
    kept = [o for o in outcomes if o.kept_as]
    if rows:
        cursor = svc.index.cursors().get(STOW_SITE, "")
        await asyncio.to_thread(append_catalog, svc.store, rows, cursor)
        await asyncio.to_thread(svc.index.apply, STOW_SITE, rows)  # visible at once to QIDO
    studies = sorted({o.study_uid for o in outcomes if o.study_uid})
    request[AUDIT]["study_uid"] = ",".join(studies)[:200]
    ok = sum(o.stored for o in outcomes)
    request[AUDIT]["detail"] = f"STOW stored={len(rows)} failed={len(outcomes) - ok}" + (
        f" conflicts_kept={len(kept)}" if kept else ""
    )
    body = _stow_response(_base_url(request), outcomes, study)
    status = 200 if ok and ok == len(outcomes) else (202 if ok else 409)
    if not outcomes:
        raise BadRequest("the request contained no parts")
    return _json(body, status=status, content_type=DICOM_JSON)


def _stow_response(base: str, outcomes: list[StowOutcome], study: str | None) -> dict[str, Any]:
    def ui(v: str) -> dict[str, Any]:
        return {"vr": "UI", "Value": [v]} if v else {"vr": "UI"}

    ok, failed = [], []
    for o in outcomes:
        item = {"00081150": ui(o.sop_class_uid), "00081155": ui(o.sop_instance_uid)}
        if o.stored:
            url = f"{base}/studies/{o.study_uid}/series/{o.series_uid}/instances/"
            item["00081190"] = {"vr": "UR", "Value": [url + o.sop_instance_uid]}
            ok.append(item)
        else:
            item["00081197"] = {"vr": "US", "Value": [o.failure]}
            failed.append(item)
    body: dict[str, Any] = {}
    study_uid = study or next((o.study_uid for o in outcomes if o.stored), "")
    if study_uid:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study_uid}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if ok:
        body["00081199"] = {"vr": "SQ", "Value": ok}
    return body


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


async def api_restore_create(request: web.Request) -> web.Response:
    svc, p = _svc(request), _principal(request)
    site = check_site(request.match_info["site"])
    p.require(Need.ADMIN, site)
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
