"""Storage Commitment Push Model (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

A modality asks "do you hold these instances safely?". We answer the N-ACTION at once and
verify on a small shared pool (COMMIT_WORKERS threads; more requests wait their turn, so a
burst of N-ACTIONs cannot start a thread each): committed means the instance has an index
row and either its cache file's crc32c equals the crc stored at ingest, or it was evicted
(eviction requires a verified cloud copy, DESIGN.md invariant 2). The report goes back on
the same association while the requester keeps it open, else on a new association to the
requesting node's registered address. `verify` is the decision, free of network I/O.
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from edge import events
from edge.assoc import assoc_info
from edge.handlers import permitted
from edge.locate import INSTANCE_COLUMNS, InstanceRef, Locator
from edge.scu import associate, node_ssl_context
from edge.sender import reactor_held, tune
from shared.errors import PROCESSING_FAILURE, REFUSED_NOT_AUTHORIZED, SUCCESS, PacsError
from shared.registry import Node, get_node

if TYPE_CHECKING:
    from edge.server import EdgeServer

log = logging.getLogger("hpacs.edge.commitment")

COMMITMENT_SOP_CLASS = str(StorageCommitmentPushModel)
# The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
ACTION_REQUEST_COMMIT = 1
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES_EXIST = 2
# Failure Reason (0008,1197) values used in the Failed SOP Sequence (PS3.4 J.3.2.1.1.2).
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
NO_SUCH_ACTION_TYPE = 0x0123
INVALID_ARGUMENT = 0x0115


@dataclass(frozen=True)
class Verdict:
    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int = 0  # 0: committed
    detail: str = ""


def verify(
    conn: sqlite3.Connection, locator: Locator, refs: Iterable[tuple[str, str]]
) -> list[Verdict]:
    """Check each (SOP class, SOP instance) against the index and the cache file's checksum
    (edge/locate.py: a damaged file is quarantined and repaired from its cloud copy, or the
    instance is lost and the commitment fails)."""
    out = []
    for sop_class, sop_instance in refs:
        row = conn.execute(
            f"SELECT {INSTANCE_COLUMNS} FROM instances i WHERE i.sop_instance_uid = ?",
            (sop_instance,),
        ).fetchone()
        if row is None:
            out.append(Verdict(sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE, "not in index"))
            continue
        if row["sop_class_uid"] != sop_class:
            out.append(
                Verdict(sop_class, sop_instance, CLASS_INSTANCE_CONFLICT, "SOP class differs")
            )
            continue
        try:
            locator.verify(InstanceRef.from_row(row))  # evicted: verified before eviction
            ok, detail = True, ""
        except PacsError as exc:
            ok, detail = False, str(exc)
        except (OSError, ValueError) as exc:
            ok, detail = False, f"cache file unreadable: {exc}"
        out.append(Verdict(sop_class, sop_instance, 0 if ok else PROCESSING_FAILURE, detail))
    return out


def event_report(transaction_uid: str, verdicts: list[Verdict], our_ae: str) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT Event Type ID and Event Information for a verified request."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.RetrieveAETitle = our_ae
    ok, failed = [], []
    for v in verdicts:
        item = Dataset()
        item.ReferencedSOPClassUID = v.sop_class_uid
        item.ReferencedSOPInstanceUID = v.sop_instance_uid
        if v.failure_reason:
            item.FailureReason = v.failure_reason
            failed.append(item)
        else:
            ok.append(item)
    if ok:
        ds.ReferencedSOPSequence = Sequence(ok)
    if failed:
        ds.FailedSOPSequence = Sequence(failed)
        return EVENT_FAILURES_EXIST, ds
    return EVENT_ALL_COMMITTED, ds


def parse_request(info: Dataset) -> tuple[str, list[tuple[str, str]]]:
    """Transaction UID and (class, instance) pairs of an N-ACTION; raises ValueError."""
    tx = str(info.get("TransactionUID", "")).strip()
    if not tx:
        raise ValueError("no Transaction UID")
    refs = []
    for item in info.get("ReferencedSOPSequence", []):
        refs.append(
            (
                str(item.get("ReferencedSOPClassUID", "")).strip(),
                str(item.get("ReferencedSOPInstanceUID", "")).strip(),
            )
        )
    if not refs:
        raise ValueError("empty Referenced SOP Sequence")
    return tx, refs


COMMIT_WORKERS = 4  # verifications and reports in flight at once, all associations together


class CommitmentHandlers:
    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self._pool = ThreadPoolExecutor(COMMIT_WORKERS, thread_name_prefix="commit")
        self._pending: set[Future[None]] = set()
        self._lock = threading.Lock()

    def handle_n_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        info = assoc_info(event.assoc)
        if str(getattr(event.request, "RequestedSOPClassUID", "")) != COMMITMENT_SOP_CLASS:
            return PROCESSING_FAILURE, None
        if not permitted(event, "commit"):
            return REFUSED_NOT_AUTHORIZED, None
        if event.action_type != ACTION_REQUEST_COMMIT:
            return NO_SUCH_ACTION_TYPE, None
        try:
            tx, refs = parse_request(event.action_information)
        except Exception as exc:
            log.warning("commitment refused calling_ae=%s reason=%s", info.calling_ae, exc)
            return INVALID_ARGUMENT, None
        fut = self._pool.submit(self._complete, event.assoc, info.calling_ae, tx, refs)
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(self._forget)
        return SUCCESS, None

    def _forget(self, fut: Future[None]) -> None:
        with self._lock:
            self._pending.discard(fut)

    def join(self, timeout_s: float = 10.0) -> None:
        """Wait for pending reports (server shutdown, tests)."""
        with self._lock:
            pending = list(self._pending)
        wait(pending, timeout=timeout_s)

    def _complete(self, assoc: Association, calling_ae: str, tx: str, refs: list[Any]) -> None:
        try:
            locator = Locator(self.server.db, self.server.cache, self.server.recaller)
            verdicts = verify(self.server.db.reader(), locator, refs)
            event_type, ds = event_report(tx, verdicts, self.server.cfg.edge.ae_title)
            failed = sum(1 for v in verdicts if v.failure_reason)
            if failed:
                detail = f"{failed} of {len(verdicts)} instance(s) not committed, transaction {tx}"
                events.record(self.server.db, events.COMMITMENT_FAILED, calling_ae, "", detail)
            how = self._report(assoc, calling_ae, event_type, ds)
            log.info(
                "commitment reported calling_ae=%s transaction_uid=%s instances=%d failed=%d "
                "via=%s",
                calling_ae,
                tx,
                len(verdicts),
                failed,
                how,
            )
        except Exception as exc:
            log.exception(
                "commitment report failed calling_ae=%s transaction_uid=%s", calling_ae, tx
            )
            detail = f"report for transaction {tx} not delivered: {exc}"
            events.record(self.server.db, events.COMMITMENT_FAILED, calling_ae, "", detail)

    def _report(self, assoc: Association, calling_ae: str, event_type: int, ds: Dataset) -> str:
        if _waits_on_same_association(assoc):
            try:
                rsp = _send_on(assoc, event_type, ds)
                if rsp is not None and "Status" in rsp:
                    return "same association"
            except Exception as exc:
                log.info("commitment report on the same association failed: %s", exc)
        node = get_node(self.server.db.reader(), calling_ae)
        if node is None or node.host == "*":
            raise RuntimeError(f"node {calling_ae} has no registered address for the report")
        ctx = node_ssl_context(self.server.cfg.edge.tls, node)
        status = send_report(self.server.cfg.edge.ae_title, node, event_type, ds, ssl_context=ctx)
        return f"new association status=0x{status:04X}"


def _waits_on_same_association(assoc: Association) -> bool:
    """The requester asked for reports on this association (it proposed the SCP role for
    Storage Commitment, PS3.4 J.3.3) and has not started to release it."""
    if not (assoc.is_established and assoc.is_alive()):
        return False
    if isinstance(assoc.dul.peek_next_pdu(), A_RELEASE):  # peek: acse's check would consume it
        return False
    return any(
        str(cx.abstract_syntax) == COMMITMENT_SOP_CLASS and cx.as_scu
        for cx in assoc.accepted_contexts
    )


SAME_ASSOCIATION_TIMEOUT_S = 5.0


def _send_on(assoc: Association, event_type: int, ds: Dataset) -> Dataset | None:
    # A requester that releases while we send never answers: bound the wait, then call back.
    saved = assoc.dimse_timeout
    assoc.dimse_timeout = min(saved or SAME_ASSOCIATION_TIMEOUT_S, SAME_ASSOCIATION_TIMEOUT_S)
    try:
        with reactor_held(assoc):  # the reactor must not take the N-EVENT-REPORT response
            rsp = assoc.send_n_event_report(
                ds, event_type, COMMITMENT_SOP_CLASS, COMMITMENT_INSTANCE
            )
        return rsp[0]
    finally:
        assoc.dimse_timeout = saved


def send_report(
    our_ae: str,
    node: Node,
    event_type: int,
    ds: Dataset,
    timeout_s: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """N-EVENT-REPORT on a new association where we take the SCP role (PS3.4 J.3.3)."""
    ae = AE(ae_title=our_ae)
    cx = build_context(COMMITMENT_SOP_CLASS)
    role = build_role(COMMITMENT_SOP_CLASS, scu_role=False, scp_role=True)
    assoc = associate(
        ae,
        node,
        ssl_context=ssl_context,
        timeout_s=timeout_s,
        contexts=[cx],
        ext_neg=[role],
        evt_handlers=[(evt.EVT_CONN_OPEN, tune)],
    )
    if not assoc.is_established:
        ae.shutdown()
        raise RuntimeError(f"cannot associate with {node.ae_title} at {node.host}:{node.port}")
    try:
        rsp = assoc.send_n_event_report(ds, event_type, COMMITMENT_SOP_CLASS, COMMITMENT_INSTANCE)[
            0
        ]
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    if rsp is None or "Status" not in rsp:
        raise RuntimeError("no N-EVENT-REPORT response")
    return int(rsp.Status)
