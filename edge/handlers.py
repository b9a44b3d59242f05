"""C-ECHO and C-STORE services: parse, call the ingest service, map the result.

The dataset of a C-STORE arrives in a spool file in the cache filesystem (edge/dimse/spool.py,
limits applied while it arrives); every stored object then goes through the one ingest path,
`Ingestor.ingest_temp`, which checks, links and indexes it before we answer 0x0000.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge import events
from edge.access import permitted
from edge.assoc import AssocInfo
from edge.dimse import command as cmd
from edge.dimse.engine import Association, Message, Sink
from edge.dimse.negotiation import Context
from edge.dimse.spool import DrainSink, SpoolFile
from edge.ingest import Ingestor, Origin, Outcome, Received
from shared import metrics
from shared.errors import (
    CANNOT_UNDERSTAND,
    REFUSED_NOT_AUTHORIZED,
    SUCCESS,
    OutOfResources,
    PacsError,
    dimse_status,
)
from shared.index import Database

log = logging.getLogger("hpacs.edge.store")

STORE_REFUSED = "C-STORE refused (0x0124): the node lacks the store permission"


class StoreService:
    """C-ECHO and C-STORE, built from the ingestor, where to spool, and the index (for the
    dashboard's refused-store events)."""

    def __init__(
        self, ingestor: Ingestor, spool_dir: Path, max_object_bytes: int, db: Database
    ) -> None:
        self.ingestor = ingestor
        self.db = db
        self.spool_dir = spool_dir
        self.max_object_bytes = max_object_bytes

    def handle_echo(self, assoc: Association, msg: Message) -> None:
        status = SUCCESS if permitted(assoc.info, "echo") else REFUSED_NOT_AUTHORIZED
        assoc.send(
            msg.context.id, cmd.echo_rsp(msg.command.message_id, msg.command.sop_class, status)
        )

    def sink_for(self, assoc: Association, cx: Context, command: cmd.Command) -> Sink:
        """Where a C-STORE's dataset goes while it arrives: a spool file, or nowhere for a node
        without the `store` permission (its refusal is logged when the response goes out)."""
        info: AssocInfo = assoc.info
        if info.node is None or not info.node.may("store"):
            return DrainSink()
        return SpoolFile(
            self.spool_dir,
            command.sop_class,
            command.sop_instance,
            cx.transfer_syntax,
            self.max_object_bytes,
        )

    def handle_store(self, assoc: Association, msg: Message) -> None:
        c = msg.command
        status = self._store(assoc.info, msg)
        assoc.send(msg.context.id, cmd.store_rsp(c.message_id, c.sop_class, c.sop_instance, status))

    def _store(self, info: AssocInfo, msg: Message) -> int:
        command, sink = msg.command, msg.sink
        if not permitted(info, "store") or isinstance(sink, DrainSink):
            if isinstance(sink, SpoolFile):
                sink.discard()  # spooled before the node lost `store`: nothing is kept
            info.failed += 1
            metrics.store_failed(REFUSED_NOT_AUTHORIZED)
            events.record(self.db, events.STORE_REFUSED, info.calling_ae, info.peer, STORE_REFUSED)
            return REFUSED_NOT_AUTHORIZED
        uid = command.sop_instance
        try:
            if not isinstance(sink, SpoolFile):
                raise _NoDataset("C-STORE-RQ without a dataset")
            if sink.exceeded:
                raise OutOfResources(
                    f"object of more than {self.max_object_bytes} bytes exceeds "
                    f"edge.max_object_bytes={self.max_object_bytes} (refused while it arrived)"
                )
            if sink.error is not None:  # the disk filled (or failed) while the dataset arrived
                raise OutOfResources(f"cannot spool the dataset to the cache: {sink.error}")
            origin = Origin("dimse", calling_ae=info.calling_ae, peer=info.peer)
            try:
                result = self.ingestor.ingest_temp(
                    sink.path,
                    origin,
                    expected_sop_class=command.sop_class,
                    expected_sop_instance=uid,
                    received=Received(sink.fd, sink.size, sink.crc.hexdigest()),
                )
            finally:
                sink.close()
        except _NoDataset as exc:
            return self._failed(info, uid, CANNOT_UNDERSTAND, str(exc), "")
        except PacsError as exc:
            return self._failed(info, uid, dimse_status(exc), str(exc), exc.hint)
        except Exception as exc:
            info.failed += 1
            log.exception(
                "store crashed calling_ae=%s sop_instance_uid=%s", info.calling_ae, uid[:64]
            )
            metrics.store_failed(dimse_status(exc))
            return dimse_status(exc)
        info.stored += 1
        if result.outcome is not Outcome.STORED:
            info.count(result.outcome.value)
        return SUCCESS

    def _failed(self, info: AssocInfo, uid: str, status: int, error: str, hint: str) -> int:
        info.failed += 1
        log.warning(
            "store failed calling_ae=%s sop_instance_uid=%s status=0x%04X error=%s hint=%s",
            info.calling_ae,
            uid[:64],
            status,
            error,
            hint,
        )
        metrics.store_failed(status)
        return status


class _NoDataset(Exception):
    pass
