"""DIMSE handlers for C-ECHO and C-STORE: parse, call the ingest service, map the result."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE

from edge import events, spool
from edge.assoc import assoc_info
from edge.ingest import Origin, Outcome
from shared import metrics
from shared.errors import (
    REFUSED_NOT_AUTHORIZED,
    SUCCESS,
    OutOfResources,
    PacsError,
    dimse_status,
)

if TYPE_CHECKING:
    from edge.server import EdgeServer

log = logging.getLogger("hpacs.edge.store")

STORE_REFUSED = "C-STORE refused (0x0124): the node lacks the store permission"


def permitted(event: evt.Event, permission: str) -> bool:
    """Whether the association's node may use a service; logs a refusal."""
    info = assoc_info(event.assoc)
    if info.node is not None and info.node.may(permission):
        return True
    log.warning(
        "service refused calling_ae=%s peer=%s service=%s reason=not permitted",
        info.calling_ae,
        info.peer,
        permission,
    )
    return False


class StoreHandlers:
    def __init__(self, server: EdgeServer) -> None:
        self.server = server

    def handle_echo(self, event: evt.Event) -> int:
        if not permitted(event, "echo"):
            return REFUSED_NOT_AUTHORIZED
        return SUCCESS

    def handle_store(self, event: evt.Event) -> int:
        info = assoc_info(event.assoc)
        req = cast(C_STORE, event.request)
        if not permitted(event, "store"):
            info.failed += 1
            metrics.store_failed(REFUSED_NOT_AUTHORIZED)
            events.record(
                self.server.db, events.STORE_REFUSED, info.calling_ae, info.peer, STORE_REFUSED
            )
            return REFUSED_NOT_AUTHORIZED
        origin = Origin("dimse", calling_ae=info.calling_ae, peer=info.peer)
        try:
            spool_error = spool.error_for(event.dataset_path)
            if spool_error is not None:  # the disk filled while the dataset arrived
                raise OutOfResources(f"cannot spool the dataset to the cache: {spool_error}")
            result = self.server.ingestor.ingest_temp(
                Path(event.dataset_path),
                origin,
                expected_sop_class=str(req.AffectedSOPClassUID),
                expected_sop_instance=str(req.AffectedSOPInstanceUID),
            )
        except PacsError as exc:
            info.failed += 1
            status = dimse_status(exc)
            log.warning(
                "store failed calling_ae=%s sop_instance_uid=%s status=0x%04X error=%s hint=%s",
                info.calling_ae,
                str(req.AffectedSOPInstanceUID)[:64],
                status,
                exc,
                exc.hint,
            )
            metrics.store_failed(status)
            return status
        except Exception as exc:
            info.failed += 1
            log.exception(
                "store crashed calling_ae=%s sop_instance_uid=%s",
                info.calling_ae,
                str(req.AffectedSOPInstanceUID)[:64],
            )
            metrics.store_failed(dimse_status(exc))
            return dimse_status(exc)
        info.stored += 1
        if result.outcome is not Outcome.STORED:
            info.stats[result.outcome.value] = info.stats.get(result.outcome.value, 0) + 1
        return SUCCESS
