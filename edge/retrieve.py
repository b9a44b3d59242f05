"""C-MOVE and C-GET services: resolve the identifier's UIDs, send each instance, report.

The sub-operation loop is ours (edge/sender.py `send_all` on our engine): C-MOVE opens one
association to the registered destination and sends every instance over it; C-GET sends them
back on the requester's own association, on the storage contexts where it accepted the SCP
role. After each sub-operation a pending response carries the counters; C-CANCEL is checked
before each one. An instance that cannot be prepared (evicted without recall, missing or
damaged file, no conversion) is one failed sub-operation with its UID listed, and the
retrieve goes on. Final status: 0x0000 when all completed, 0xB000 with the Failed SOP
Instance UID List when some failed or warned, 0xA702 when every one failed (including a
destination that could not be reached or refused the association).

Retrieve identifiers select by the unique keys of their level (PS3.4 C.4.2.2.1):
PatientID at PATIENT level, StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID lists below.
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset

from edge.access import permitted
from edge.assoc import AssocInfo
from edge.dimse import client, dataset
from edge.dimse import command as cmd
from edge.dimse.engine import Association, Message
from edge.locate import INSTANCE_COLUMNS, InstanceRef
from edge.sender import SendReport, Source, SubOp, requested_contexts, send_all
from shared.deletion import visible_sql
from shared.errors import (
    CANCEL,
    CANNOT_UNDERSTAND,
    IDENTIFIER_DOES_NOT_MATCH,
    MOVE_DESTINATION_UNKNOWN,
    OUT_OF_RESOURCES_SUBOPS,
    PENDING,
    REFUSED_NOT_AUTHORIZED,
    SUBOPS_WARNING,
    SUCCESS,
    BadRequest,
)
from shared.index import Database
from shared.registry import Node, get_node
from shared.uids import is_valid_uid

log = logging.getLogger("hpacs.edge.retrieve")

MOVE_SOP_CLASSES = ["1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2"]
GET_SOP_CLASSES = ["1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3"]
STUDY_ROOT_CLASSES = frozenset((MOVE_SOP_CLASSES[1], GET_SOP_CLASSES[1]))  # no PATIENT level
MAX_SUBOPERATIONS = 65535  # the counters are US

_LEVELS = {
    "PATIENT": ("PatientID", "s.patient_id"),
    "STUDY": ("StudyInstanceUID", "s.study_uid"),
    "SERIES": ("SeriesInstanceUID", "se.series_uid"),
    "IMAGE": ("SOPInstanceUID", "i.sop_instance_uid"),
}


def _values(ds: Dataset, keyword: str) -> list[str]:
    raw = ds.get(keyword)
    if raw is None or raw == "":
        return []
    items = list(raw) if not isinstance(raw, str | bytes) else str(raw).split("\\")
    return [str(v).strip() for v in items if str(v).strip()]


def selection_sql(identifier: Dataset) -> tuple[str, list[str]]:
    """The SQL selecting the instances a retrieve identifier names (pure; raises BadRequest)."""
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in _LEVELS:
        raise BadRequest(f"QueryRetrieveLevel must be one of {', '.join(_LEVELS)}, got {level!r}")
    keyword, column = _LEVELS[level]
    values = _values(identifier, keyword)
    if not values:
        raise BadRequest(f"a {level} level retrieve needs {keyword}")
    if keyword != "PatientID":
        bad = [v for v in values if not is_valid_uid(v)]
        if bad:
            raise BadRequest(f"{keyword} is not a valid UID: {bad[0][:80]!r}")
    marks = ",".join("?" * len(values))
    sql = (
        f"SELECT {INSTANCE_COLUMNS} FROM instances i "
        "JOIN studies s ON s.id = i.study_id JOIN series se ON se.id = i.series_id "
        f"WHERE {column} IN ({marks}) AND {visible_sql('i')} "
        "ORDER BY s.id, se.series_number, se.id, i.instance_number, i.id"
    )
    return sql, values


def resolve(conn: sqlite3.Connection, identifier: Dataset) -> list[InstanceRef]:
    sql, args = selection_sql(identifier)
    return [InstanceRef.from_row(r) for r in conn.execute(sql, args)]


def touch(conn: sqlite3.Connection, refs: list[InstanceRef], now: float) -> None:
    """Record the access on instances and studies (the sync agent evicts by studies.last_access)."""
    ids = [r.id for r in refs]
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        conn.execute(
            f"UPDATE instances SET last_access = ? WHERE id IN ({','.join('?' * len(chunk))})",
            [now, *chunk],
        )
    studies = sorted({r.study_id for r in refs})
    conn.execute(
        f"UPDATE studies SET last_access = ? WHERE id IN ({','.join('?' * len(studies))})",
        [now, *studies],
    )


@dataclass(frozen=True)
class RetrieveSettings:
    ae_title: str
    max_pdu: int
    timeout_s: float  # connect and negotiate with a move destination


class _Operation:
    """One C-MOVE/C-GET in progress on the requester's association: counters and responses."""

    def __init__(self, assoc: Association, msg: Message, field: int, total: int) -> None:
        self.assoc, self.msg, self.field = assoc, msg, field
        self.report = SendReport()
        self.remaining = total

    def pending(self) -> None:
        r = self.report
        counts = (self.remaining, r.completed, r.failed, r.warning)
        c = self.msg.command
        self.assoc.send(
            self.msg.context.id,
            cmd.retrieve_rsp(self.field, c.message_id, c.sop_class, PENDING, counts, False),
        )

    def final(self, status: int | None = None, cancelled: bool = False) -> int:
        r, c = self.report, self.msg.command
        if status is None:
            if not r.failed and not r.warning:
                status = SUCCESS
            elif r.failed and not r.completed and not r.warning:
                status = OUT_OF_RESOURCES_SUBOPS  # every sub-operation failed
            else:
                status = SUBOPS_WARNING
        remaining = self.remaining if cancelled else -1
        counts = (remaining, r.completed, r.failed, r.warning)
        ident = None
        if status != SUCCESS and (r.failed or r.warning or cancelled):
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = r.failed_uids
            ident = dataset.encode(ds, self.msg.context.transfer_syntax)
        command = cmd.retrieve_rsp(
            self.field, c.message_id, c.sop_class, status, counts, ident is not None
        )
        self.assoc.send(self.msg.context.id, command, ident)
        return status

    def add(self, sub: SubOp) -> None:
        self.report.add(sub)
        self.remaining -= 1


class RetrieveService:
    """C-MOVE and C-GET, built from the index, the instance source and our identity."""

    def __init__(
        self,
        db: Database,
        source: Source,
        settings: RetrieveSettings,
        ssl_context_for: Callable[[Node], ssl.SSLContext | None],
    ) -> None:
        self.db = db
        self.source = source
        self.settings = settings
        self.ssl_context_for = ssl_context_for

    def _matches(self, identifier: Dataset) -> list[InstanceRef]:
        refs = resolve(self.db.reader(), identifier)
        if len(refs) > MAX_SUBOPERATIONS:
            raise BadRequest(f"{len(refs)} instances match; a retrieve is limited to 65535")
        if refs:
            with self.db.write() as conn:
                touch(conn, refs, time.time())
        return refs

    def _identifier(self, assoc: Association, msg: Message, field: int) -> list[InstanceRef] | None:
        """The matching instances, or None after a failure response was sent."""
        info: AssocInfo = assoc.info
        c = msg.command
        try:
            identifier = dataset.decode(msg.data, msg.context.transfer_syntax)
            level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
            if level == "PATIENT" and str(c.sop_class) in STUDY_ROOT_CLASSES:
                raise BadRequest("QueryRetrieveLevel PATIENT is not valid for the study root model")
            return self._matches(identifier)
        except (BadRequest, dataset.DatasetError) as exc:
            status = IDENTIFIER_DOES_NOT_MATCH if isinstance(exc, BadRequest) else CANNOT_UNDERSTAND
            log.warning(
                "%s refused calling_ae=%s status=0x%04X reason=%s",
                "move" if field == cmd.C_MOVE_RSP else "get",
                info.calling_ae,
                status,
                exc,
            )
            assoc.send(
                msg.context.id,
                cmd.retrieve_rsp(field, c.message_id, c.sop_class, status, None, False),
            )
            return None

    def _refuse(self, assoc: Association, msg: Message, field: int, status: int) -> None:
        c = msg.command
        assoc.send(
            msg.context.id, cmd.retrieve_rsp(field, c.message_id, c.sop_class, status, None, False)
        )

    def _run(self, op: _Operation, subops: Iterator[SubOp], what: str) -> tuple[bool, int]:
        """Feed sub-operation outcomes into the counters; (cancelled, sent)."""
        assoc, c = op.assoc, op.msg.command
        sent = 0
        for sub in subops:
            op.add(sub)
            sent += 1
            op.pending()
            if op.remaining and assoc.cancelled(c.message_id):
                log.info("%s cancelled calling_ae=%s sent=%d", what, assoc.info.calling_ae, sent)
                return True, sent
        return False, sent

    # ---- C-MOVE ------------------------------------------------------------------------
    def handle_move(self, assoc: Association, msg: Message) -> None:
        info: AssocInfo = assoc.info
        field = cmd.C_MOVE_RSP
        if not permitted(info, "move"):
            self._refuse(assoc, msg, field, REFUSED_NOT_AUTHORIZED)
            return
        dest = str(msg.command.get(cmd.MOVE_DESTINATION) or "").strip()
        node = self._destination(dest)
        if node is None:
            log.warning(
                "move refused calling_ae=%s destination=%s reason=unknown destination",
                info.calling_ae,
                dest,
            )
            self._refuse(assoc, msg, field, MOVE_DESTINATION_UNKNOWN)
            return
        refs = self._identifier(assoc, msg, field)
        if refs is None:
            return
        op = _Operation(assoc, msg, field, len(refs))
        started = time.monotonic()
        if not refs:
            op.final()
            return
        s = self.settings
        try:
            out = client.connect(
                s.ae_title,
                node.host,
                node.port,
                node.ae_title,
                requested_contexts(refs),
                max_pdu=s.max_pdu,
                timeout_s=s.timeout_s,
                ssl_context=self.ssl_context_for(node),
            )
        except client.AssociationFailed as exc:
            log.warning(
                "move failed calling_ae=%s destination=%s address=%s:%d reason=%s",
                info.calling_ae,
                dest,
                node.host,
                node.port,
                exc,
            )
            for ref in refs:
                op.add(SubOp(ref.sop_instance_uid, "failed", reason=str(exc)))
            op.final()
            return
        cancelled = False
        try:
            originator = (info.calling_ae, msg.command.message_id)
            subops = send_all(out, refs, self.source, peer=dest, originator=originator)
            cancelled, _ = self._run(op, _guarded(subops, refs, op, dest), "move")
        finally:
            if not out.ended:
                out.release()
        status = op.final(CANCEL if cancelled else None, cancelled)
        self._done("move", info, op.report, status, started, dest)

    def _destination(self, ae_title: str) -> Node | None:
        node = get_node(self.db.reader(), ae_title)
        if node is None or node.host == "*":
            return None
        return node

    # ---- C-GET -------------------------------------------------------------------------
    def handle_get(self, assoc: Association, msg: Message) -> None:
        info: AssocInfo = assoc.info
        field = cmd.C_GET_RSP
        if not permitted(info, "get"):
            self._refuse(assoc, msg, field, REFUSED_NOT_AUTHORIZED)
            return
        refs = self._identifier(assoc, msg, field)
        if refs is None:
            return
        op = _Operation(assoc, msg, field, len(refs))
        started = time.monotonic()
        subops = send_all(assoc, refs, self.source, peer=info.calling_ae)
        cancelled, _ = self._run(op, subops, "get")
        status = op.final(CANCEL if cancelled else None, cancelled)
        self._done("get", info, op.report, status, started, "")

    def _done(
        self, what: str, info: AssocInfo, r: SendReport, status: int, started: float, dest: str
    ) -> None:
        log.info(
            "%s done calling_ae=%s%s instances=%d delivered=%d failed=%d warning=%d "
            "status=0x%04X duration_s=%.3f",
            what,
            info.calling_ae,
            f" destination={dest}" if dest else "",
            len(r.results),
            r.completed,
            r.failed,
            r.warning,
            status,
            time.monotonic() - started,
        )
        if r.failed:
            log.debug("%s failed sop_instance_uids=%s", what, ",".join(r.failed_uids))


def _guarded(
    subops: Iterator[SubOp], refs: list[InstanceRef], op: _Operation, dest: str
) -> Iterator[SubOp]:
    """The sub-operations of a C-MOVE; when the destination association breaks, the rest
    fail (with a log line) instead of ending the requester's association."""
    seen = 0
    try:
        for sub in subops:
            seen += 1
            yield sub
    except Exception as exc:  # LinkClosed, PeerAborted, LinkTimeout, ProtocolError
        log.warning("move destination=%s association lost after %d: %s", dest, seen, exc)
        for ref in refs[seen:]:
            yield SubOp(ref.sop_instance_uid, "failed", reason=f"association lost: {exc}")
