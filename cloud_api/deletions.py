"""DICOMweb DELETE on the cloud API: `DELETE /dicomweb/studies/{study}[/series/{series}
[/instances/{instance}]]` (admin), as Orthanc's DICOMweb plugin and Google's Healthcare API
offer it (PS3.18 defines no DELETE).

A deletion is the site's business: its retention rules and legal holds decide, in its index.
For every edge site holding the target (in the admin's site scope) the API writes a request
under `control/<site>/deletions/<id>.json` (shared/deletion_request.py) and answers `202
Accepted` with a status URL; the site's sync agent applies it through the edge's one deletion
path and writes the outcome beside it; its tombstones reach this catalog with the site's next
journal object (QIDO then stops finding it). No inbound connection to the hospital is needed.

For the API's own STOW site (`cloud`) the deletion is applied here at once: tombstone rows go
to `catalog/cloud/` and into the catalog, the object keys go into the status document, and
`purge_due` (run with the catalog poll) deletes the objects once `retention.delete_grace_days`
is over, with purge tombstones. Query parameters: `reason` (recorded in both audit trails),
`override=true` (lift an edge site's retention; never a legal hold).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from cloud_api.auth import Need
from cloud_api.catalog import InstanceRef
from cloud_api.handlers import AUDIT, _json, _principal, _svc
from cloud_api.stow import STOW_SITE, append_catalog
from shared import control
from shared.catalog import CatalogRow
from shared.deletion import Target
from shared.deletion_request import DeletionRequest, DeletionStatus, new_deletion_id
from shared.dicom import Header
from shared.errors import NotFound
from shared.keys import DELETIONS, check_site

if TYPE_CHECKING:
    from cloud_api.app import Services

log = logging.getLogger("hpacs.cloud.deletions")


def _tombstones(
    refs: list[InstanceRef], now: float, deleted_at: float, purged: bool
) -> list[CatalogRow]:
    return [
        CatalogRow(
            header=Header(
                sop_instance_uid=r.sop_instance_uid,
                sop_class_uid=r.sop_class_uid,
                study_uid=r.study_uid,
                series_uid=r.series_uid,
                transfer_syntax=r.transfer_syntax,
            ),
            size=r.size,
            crc32c=r.crc32c,
            object_key=r.object_key,
            site=STOW_SITE,
            received_at=now,
            source="stow",
            deleted=True,
            purged=purged,
            deleted_at=deleted_at,
        )
        for r in refs
    ]


def _journal(svc: Services, rows: list[CatalogRow]) -> None:
    cursor = svc.catalog.cursors().get(STOW_SITE, "")
    append_catalog(svc.store, rows, cursor)
    svc.catalog.apply(STOW_SITE, [r.to_json() for r in rows])  # visible to QIDO at once


def _put_status(svc: Services, st: DeletionStatus) -> None:
    control.put_status(svc.store, DELETIONS, st.site, st.id, st.to_bytes())


def request_deletion(
    svc: Services, by: str, sites: list[str], t: Target, reason: str, override: bool
) -> list[dict[str, Any]]:
    """One request per site in `sites` holding the target; NotFound when none does."""
    found = {}
    for site in sites:
        refs = svc.catalog.instances(
            t.study_uid, t.series_uid or None, t.sop_instance_uid or None, sites=[site]
        )
        if refs:
            found[site] = refs
    if not found:
        raise NotFound(f"no {t.describe()} in the catalog")
    out = []
    for site, refs in found.items():
        req = DeletionRequest(
            id=new_deletion_id(),
            site=site,
            study_uid=t.study_uid,
            series_uid=t.series_uid,
            sop_instance_uid=t.sop_instance_uid,
            reason=reason,
            override=override,
            requested_by=by,
        )
        control.put_request(svc.store, DELETIONS, site, req.id, req.to_bytes())
        phase = _apply_cloud_site(svc, req, refs).phase if site == STOW_SITE else "pending"
        out.append(
            {
                "site": site,
                "id": req.id,
                "phase": phase,
                "instances": len(refs),
                "status_url": f"/api/sites/{site}/deletions/{req.id}",
            }
        )
    return out


def _apply_cloud_site(
    svc: Services, req: DeletionRequest, refs: list[InstanceRef]
) -> DeletionStatus:
    now = time.time()
    _journal(svc, _tombstones(refs, now, now, purged=False))
    st = DeletionStatus(
        id=req.id,
        site=STOW_SITE,
        phase="done",
        updated_at=now,
        instances=len(refs),
        agent="cloud-api",
        purge_after=now + svc.retention.delete_grace_days * 86400.0,
        objects=[
            {
                "key": r.object_key,
                "study_uid": r.study_uid,
                "series_uid": r.series_uid,
                "sop_instance_uid": r.sop_instance_uid,
                "sop_class_uid": r.sop_class_uid,
                "transfer_syntax": r.transfer_syntax,
                "crc32c": r.crc32c,
                "size": str(r.size),
            }
            for r in refs
        ],
    )
    _put_status(svc, st)
    return st


def purge_due(svc: Services, now: float | None = None) -> int:
    """Purge the cloud site's deletions whose grace is over; returns instances purged."""
    now = time.time() if now is None else now
    n = 0
    for data in control.statuses(svc.store, DELETIONS, STOW_SITE):
        st = DeletionStatus.from_bytes(data)
        if st.phase != "done" or st.purge_after > now:
            continue
        refs = [
            InstanceRef(o["study_uid"], o["series_uid"], o["sop_instance_uid"], o["sop_class_uid"],
                        None, o["transfer_syntax"], o["key"], int(o["size"]), o["crc32c"])
            for o in st.objects
        ]  # fmt: skip
        _journal(svc, _tombstones(refs, now, st.updated_at, purged=True))  # before the bytes
        for r in refs:
            try:
                svc.store.delete(r.object_key)
            except NotFound:
                pass
        _put_status(svc, DeletionStatus(**{**st.to_json(), "phase": "purged", "updated_at": now}))
        studies = sorted({r.study_uid for r in refs})
        svc.audit.record(
            action="purge",
            outcome="ok",
            token="cloud-api",
            study_uid=",".join(studies)[:200],
            detail=f"site={STOW_SITE} deletion={st.id} instances={len(refs)}",
        )
        n += len(refs)
    if n:
        log.info("purged site=%s instances=%d", STOW_SITE, n)
    return n


# ---- handlers -----------------------------------------------------------------------------------


def _sites(svc: Services) -> set[str]:
    """Every site the catalog knows: journals applied, and STOW's rows applied directly."""
    return set(svc.catalog.cursors()) | {c.site for c in svc.catalog.site_counts()}


async def dicomweb_delete(request: web.Request) -> web.Response:
    svc, p = _svc(request), _principal(request)
    m = request.match_info
    target = Target(m["study"], m.get("series", ""), m.get("instance", ""))
    reason = request.query.get("reason", "")[:500]
    override = request.query.get("override", "").lower() in ("1", "true", "yes")
    known = await asyncio.to_thread(_sites, svc)
    sites = [s for s in sorted(known) if p.may(Need.ADMIN, s)]
    reqs = await asyncio.to_thread(request_deletion, svc, p.name, sites, target, reason, override)
    request[AUDIT]["detail"] = (
        f"delete {target.describe()} override={override} reason={reason[:80]!r} "
        + " ".join(f"{r['site']}:{r['id']}" for r in reqs)
    )
    return _json({"target": target.describe(), "requests": reqs}, status=202)


async def api_deletion_get(request: web.Request) -> web.Response:
    svc, p = _svc(request), _principal(request)
    site = check_site(request.match_info["site"])
    p.require(Need.ADMIN, site)
    rid = request.match_info["deletion_id"]

    def status() -> dict[str, Any]:
        data = control.read_status(svc.store, DELETIONS, site, rid)
        if data is None:
            return {"id": rid, "site": site, "phase": "pending"}
        d = DeletionStatus.from_bytes(data).to_json()
        d.pop("objects", None)  # the keys stay in the bucket's document
        return d

    return _json(await asyncio.to_thread(status))
