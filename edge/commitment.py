"""Storage Commitment Push Model (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

A modality asks "do you hold these instances safely?". We answer the N-ACTION at once, then
verify on the association's own thread (no thread per request): committed means the instance
has an index row and either its cache file's crc32c equals the crc stored at ingest, or it was
evicted (eviction requires a verified cloud copy, DESIGN.md invariant 2). The verdicts become a
row of the persistent report queue (edge/commitqueue.py) before any delivery is tried.

Delivery: on the same association when the requester keeps it open (PS3.4 J.3.3 needs role
selection only for a separate association): at once when it proposed the SCP role, else once
it has stayed open SAME_ASSOCIATION_GRACE_S without releasing. A requester that releases gets
the report on a call-back association to its registered address right after the release; a
call-back that fails stays queued with backoff (`/api/commitments`). `verify` is the decision,
free of network I/O.
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from edge import events
from edge.access import permitted
from edge.assoc import AssocInfo
from edge.commitqueue import Report, ReportQueue, ReportState
from edge.dimse import client, dataset
from edge.dimse import command as cmd
from edge.dimse.engine import RELEASE, Association, Message, PeerAborted
from edge.dimse.link import LinkClosed, LinkTimeout
from edge.dimse.pdu import ProtocolError
from edge.locate import INSTANCE_COLUMNS, InstanceRef, Locator
from shared.errors import PROCESSING_FAILURE, REFUSED_NOT_AUTHORIZED, SUCCESS, PacsError
from shared.index import Database
from shared.registry import Node, get_node

log = logging.getLogger("hpacs.edge.commitment")

COMMITMENT_SOP_CLASS = "1.2.840.10008.1.20.1"
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


# Threads that verify and report for one association: its own (the one that owns its socket),
# never a thread per N-ACTION; call-backs from the persistent queue run on the one retrier.
COMMIT_WORKERS = 1
SAME_ASSOCIATION_GRACE_S = 1.0  # a requester without role selection that stays this long waits
SAME_ASSOCIATION_TIMEOUT_S = 5.0  # for its N-EVENT-REPORT response, then we call back
SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


@dataclass(frozen=True)
class CommitSettings:
    ae_title: str
    timeout_s: float  # call-back association: connect, negotiate, response


def _verdicts(report: Report) -> list[Verdict]:
    return [Verdict(c, i, reason) for c, i, reason in report.verdicts]


class CommitmentService:
    """N-ACTION (Request Storage Commitment), built from the index, the cache, the report queue
    and what a call-back association needs."""

    def __init__(
        self,
        db: Database,
        locator: Locator,
        queue: ReportQueue,
        settings: CommitSettings,
        ssl_context_for: Callable[[Node], ssl.SSLContext | None],
    ) -> None:
        self.db = db
        self.locator = locator
        self.queue = queue
        self.settings = settings
        self.ssl_context_for = ssl_context_for

    def handle_n_action(self, assoc: Association, msg: Message) -> None:
        info: AssocInfo = assoc.info
        c = msg.command
        request_class = str(c.get(cmd.REQUESTED_SOP_CLASS) or c.sop_class)
        request_instance = str(c.get(cmd.REQUESTED_SOP_INSTANCE) or c.sop_instance)
        action_type = c.get(cmd.ACTION_TYPE_ID)

        def respond(status: int) -> None:
            rsp = cmd.n_action_rsp(
                c.message_id, request_class, request_instance, action_type, status
            )
            assoc.send(msg.context.id, rsp)

        if request_class != COMMITMENT_SOP_CLASS:
            respond(PROCESSING_FAILURE)
            return
        if not permitted(info, "commit"):
            respond(REFUSED_NOT_AUTHORIZED)
            return
        if action_type != ACTION_REQUEST_COMMIT:
            respond(NO_SUCH_ACTION_TYPE)
            return
        try:
            tx, refs = parse_request(dataset.decode(msg.data, msg.context.transfer_syntax))
        except Exception as exc:
            log.warning("commitment refused calling_ae=%s reason=%s", info.calling_ae, exc)
            respond(INVALID_ARGUMENT)
            return
        respond(SUCCESS)
        verdicts = verify(self.db.reader(), self.locator, refs)
        report_id = self.queue.add(
            info.calling_ae,
            tx,
            [(v.sop_class_uid, v.sop_instance_uid, v.failure_reason) for v in verdicts],
        )
        failed = sum(1 for v in verdicts if v.failure_reason)
        if failed:
            detail = f"{failed} of {len(verdicts)} instance(s) not committed, transaction {tx}"
            events.record(self.db, events.COMMITMENT_FAILED, info.calling_ae, "", detail)
        if self._on_same_association(assoc, msg, tx, verdicts) and self.queue.claim(report_id):
            self.queue.sent(report_id)
            self._log(info.calling_ae, tx, len(verdicts), failed, "same association")
            return
        # the requester released (or did not answer): call back once it has gone
        info.after.append(lambda: self.deliver_by_id(report_id))

    def _on_same_association(
        self, assoc: Association, msg: Message, tx: str, verdicts: list[Verdict]
    ) -> bool:
        """Send the report here unless the requester releases first; True when it answered."""
        wants = any(
            cx.abstract_syntax == COMMITMENT_SOP_CLASS and cx.as_scu
            for cx in assoc.contexts.values()
        )
        try:
            if assoc.link.readable(0 if wants else SAME_ASSOCIATION_GRACE_S):
                item = assoc.receive(assoc.dimse_timeout_s)
                assoc.requeue(item)
                if item is RELEASE:
                    return False
            event_type, ds = event_report(tx, verdicts, self.settings.ae_title)
            cx = msg.context
            message_id = assoc.next_message_id()
            info = dataset.encode(ds, cx.transfer_syntax)
            assoc.send(
                cx.id,
                cmd.n_event_report_rq(
                    message_id, COMMITMENT_SOP_CLASS, COMMITMENT_INSTANCE, event_type, True
                ),
                info,
            )
            rsp = assoc.wait_response(message_id, SAME_ASSOCIATION_TIMEOUT_S)
            return rsp.command.status is not None
        except (LinkTimeout, ProtocolError, cmd.CommandError):
            return False
        except LinkClosed:
            if assoc.release_requested:
                return False  # released while we sent: the release is answered by the loop
            raise
        except PeerAborted:
            raise

    def deliver_by_id(self, report_id: int) -> None:
        report = self.queue.get(report_id)
        if report is not None:
            self.deliver(report)

    def deliver(self, report: Report) -> None:
        """One call-back attempt for a pending report (claimed here; failures back off)."""
        if not self.queue.claim(report.id):
            return
        verdicts = _verdicts(report)
        failed = sum(1 for v in verdicts if v.failure_reason)
        try:
            node = get_node(self.db.reader(), report.calling_ae)
            if node is None or node.host == "*":
                raise RuntimeError(f"node {report.calling_ae} has no registered address")
            event_type, ds = event_report(report.transaction_uid, verdicts, self.settings.ae_title)
            status = send_report(self.settings, node, event_type, ds, self.ssl_context_for(node))
        except Exception as exc:
            attempts = report.attempts + 1
            state = self.queue.failed(report.id, attempts, str(exc))
            detail = f"report for transaction {report.transaction_uid} not delivered: {exc}"
            events.record(self.db, events.COMMITMENT_FAILED, report.calling_ae, "", detail)
            log.warning(
                "commitment report not delivered calling_ae=%s transaction_uid=%s attempt=%d "
                "state=%s reason=%s",
                report.calling_ae,
                report.transaction_uid,
                attempts,
                state.value,
                exc,
            )
            return
        self.queue.sent(report.id, ReportState.SENDING)
        self._log(
            report.calling_ae,
            report.transaction_uid,
            len(verdicts),
            failed,
            f"new association status=0x{status:04X}",
        )

    def _log(self, calling_ae: str, tx: str, n: int, failed: int, how: str) -> None:
        log.info(
            "commitment reported calling_ae=%s transaction_uid=%s instances=%d failed=%d via=%s",
            calling_ae,
            tx,
            n,
            failed,
            how,
        )


def send_report(
    settings: CommitSettings,
    node: Node,
    event_type: int,
    ds: Dataset,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """N-EVENT-REPORT on a new association where we take the SCP role (PS3.4 J.3.3)."""
    assoc = client.connect(
        settings.ae_title,
        node.host,
        node.port,
        node.ae_title,
        [(COMMITMENT_SOP_CLASS, SYNTAXES)],
        roles={COMMITMENT_SOP_CLASS: (False, True)},
        timeout_s=settings.timeout_s,
        ssl_context=ssl_context,
    )
    try:
        cx = next(iter(assoc.contexts.values()), None)
        if cx is None:
            raise RuntimeError(f"{node.ae_title} accepted no Storage Commitment context")
        info = dataset.encode(ds, cx.transfer_syntax)
        rsp = client.request_and_wait(
            assoc,
            cx.id,
            lambda mid: cmd.n_event_report_rq(
                mid, COMMITMENT_SOP_CLASS, COMMITMENT_INSTANCE, event_type, True
            ),
            info,
        )
        return client.status_of(rsp)
    finally:
        if not assoc.ended:
            assoc.release()
