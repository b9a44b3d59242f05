"""C-MOVE and C-GET SCP handlers: resolve the identifier's UIDs, then feed pynetdicom's retrieve.

pynetdicom's Q/R service owns the sub-operation loop: it opens the one store association to
the move destination (with the contexts we yield), sends each dataset we yield, keeps the
remaining/completed/failed/warning counters, sends the pending responses and lists failed SOP
Instance UIDs in the final identifier. We decide who may retrieve what, which instances match,
and what bytes go out for each (edge/sender.py: as stored, or converted). An instance we cannot
prepare (evicted without recall, missing file, no conversion) is yielded as a stub pynetdicom
cannot send, so it counts as one failed sub-operation and the move goes on.

Retrieve identifiers select by the unique keys of their level (PS3.4 C.4.2.2.1):
PatientID at PATIENT level, StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID lists below.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from edge.assoc import assoc_info
from edge.handlers import permitted
from edge.locate import INSTANCE_COLUMNS, InstanceRef, Locator
from edge.scu import node_ssl_context, tls_args
from edge.sender import (
    FilePlaceholder,
    accepted_syntaxes,
    failure_stub,
    install_file_send,
    log_failure,
    prepare,
    requested_contexts,
    tune,
)
from shared.deletion import visible_sql
from shared.errors import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH,
    PENDING,
    REFUSED_NOT_AUTHORIZED,
    BadRequest,
    NotAuthorized,
    PacsError,
)
from shared.registry import Node, get_node
from shared.uids import is_valid_uid

if TYPE_CHECKING:
    from edge.server import EdgeServer

log = logging.getLogger("hpacs.edge.retrieve")

MOVE_SOP_CLASSES = [
    str(PatientRootQueryRetrieveInformationModelMove),
    str(StudyRootQueryRetrieveInformationModelMove),
]
GET_SOP_CLASSES = [
    str(PatientRootQueryRetrieveInformationModelGet),
    str(StudyRootQueryRetrieveInformationModelGet),
]
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


_RSP_COMMAND_FIELD = {C_MOVE: 0x8021, C_GET: 0x8010}


def pending_command(
    command_field: int, message_id: int, sop_class: str, counts: tuple[int, ...]
) -> bytes:
    """A pending C-MOVE/C-GET-RSP command set without identifier, implicit VR little endian
    (PS3.7 C.4.2.1.4 / C.4.3.1.4); `counts` = remaining, completed, failed, warning."""

    def el(elem: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, elem, len(value)) + value

    uid = sop_class.encode("ascii")
    body = (
        el(0x0002, uid + b"\0" if len(uid) % 2 else uid)
        + el(0x0100, struct.pack("<H", command_field))
        + el(0x0120, struct.pack("<H", message_id))
        + el(0x0800, struct.pack("<H", 0x0101))  # no data set
        + el(0x0900, struct.pack("<H", PENDING))
        + b"".join(el(0x1020 + i, struct.pack("<H", n)) for i, n in enumerate(counts))
    )
    return el(0x0000, struct.pack("<I", len(body))) + body


def install_fast_pending(assoc: Association) -> None:
    """Send the per-sub-operation pending responses without pydicom's encoder.

    pynetdicom encodes every pending C-MOVE/C-GET response with pydicom (about a millisecond
    each, once per instance moved); these carry only fixed elements, so we frame them here
    and hand the PDU to the DUL like pynetdicom does. Anything else takes pynetdicom's path.
    """
    if getattr(assoc, "hpacs_fast_pending", False):
        return
    slow = assoc.dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        field = _RSP_COMMAND_FIELD.get(type(primitive))
        limit = assoc.dimse.maximum_pdu_size
        if (
            field is not None
            and primitive.Status == PENDING
            and primitive.Identifier is None
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.AffectedSOPClassUID is not None
            and (not limit or limit > 200)
            and not assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            counts = (
                primitive.NumberOfRemainingSuboperations,
                primitive.NumberOfCompletedSuboperations,
                primitive.NumberOfFailedSuboperations,
                primitive.NumberOfWarningSuboperations,
            )
            if all(isinstance(n, int) for n in counts):
                command = pending_command(
                    field,
                    primitive.MessageIDBeingRespondedTo,
                    str(primitive.AffectedSOPClassUID),
                    counts,  # type: ignore[arg-type]
                )
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
                assoc.dul.send_pdu(pdata)
                return
        slow(primitive, context_id)

    assoc.dimse.send_msg = send_msg  # type: ignore[method-assign]
    assoc.hpacs_fast_pending = True  # type: ignore[attr-defined]


class RetrieveHandlers:
    def __init__(self, server: EdgeServer) -> None:
        self.server = server

    # ---- shared steps ------------------------------------------------------------------
    def locate(self, ref: InstanceRef) -> tuple[Path, bytes]:
        """The instance's cache path and its bytes, verified (damaged: repaired or failed)."""
        return Locator(self.server.db, self.server.cache, self.server.recaller).read_at(ref)

    def _matches(self, identifier: Dataset) -> list[InstanceRef]:
        refs = resolve(self.server.db.reader(), identifier)
        if len(refs) > MAX_SUBOPERATIONS:
            raise BadRequest(f"{len(refs)} instances match; a retrieve is limited to 65535")
        if refs:
            with self.server.db.write() as conn:
                touch(conn, refs, time.time())
        return refs

    def _dataset(self, ref: InstanceRef, accepted: dict[str, list[str]], peer: str) -> Dataset:
        try:
            ds, plan = prepare(ref, self.locate(ref), accepted)
        except PacsError as exc:
            log_failure(ref.sop_instance_uid, str(exc), destination=peer)
            return failure_stub(ref)
        except Exception as exc:
            log_failure(ref.sop_instance_uid, f"cannot read stored object: {exc}", destination=peer)
            return failure_stub(ref)
        if not plan.as_is:
            log.debug(
                "converting sop_instance_uid=%s from=%s to=%s",
                ref.sop_instance_uid,
                plan.source,
                plan.target,
            )
        return ds

    def _lookahead(
        self, refs: list[InstanceRef], accepted: dict[str, list[str]], peer: str
    ) -> Iterator[Dataset]:
        """Datasets one step ahead, each placeholder linked to the next (`hpacs_next`) so the
        sender can read the next file while the peer stores the current one."""
        current: Dataset | None = None
        for ref in refs:
            nxt = self._dataset(ref, accepted, peer)
            if current is not None:
                if isinstance(current, FilePlaceholder) and isinstance(nxt, FilePlaceholder):
                    object.__setattr__(current, "hpacs_next", nxt)
                yield current
            current = nxt
        if current is not None:
            yield current

    # ---- C-MOVE ------------------------------------------------------------------------
    def handle_move(self, event: evt.Event) -> Iterator[Any]:
        info = assoc_info(event.assoc)
        if not permitted(event, "move"):
            # pynetdicom's C-MOVE flow cannot answer 0x0124 before a destination is chosen;
            # an error here becomes a failure response (0xC514) with no connection made.
            raise NotAuthorized(f"{info.calling_ae} may not C-MOVE")
        raw = event.move_destination or ""
        dest = (raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)).strip()
        node = self._destination(dest)
        if node is None:
            log.warning(
                "move refused calling_ae=%s destination=%s reason=unknown destination",
                info.calling_ae,
                dest,
            )
            yield None, None  # pynetdicom answers 0xA801 and connects nowhere
            return
        refs = self._matches(event.identifier)
        captured: list[Association] = []

        def on_open(e: evt.Event) -> None:
            tune(e)
            captured.append(e.assoc)

        kwargs: dict[str, Any] = {
            "contexts": requested_contexts(refs),
            "max_pdu": self.server.cfg.edge.max_pdu_bytes,
            "evt_handlers": [(evt.EVT_CONN_OPEN, on_open)],
        }
        kwargs["tls_args"] = tls_args(node, node_ssl_context(self.server.cfg.edge.tls, node))
        yield node.host, node.port, kwargs
        install_fast_pending(event.assoc)
        yield len(refs)
        started = time.monotonic()
        accepted = accepted_syntaxes(captured[0]) if captured else {}
        for n, ds in enumerate(self._lookahead(refs, accepted, dest)):
            if event.is_cancelled:
                log.info("move cancelled calling_ae=%s sent=%d", info.calling_ae, n)
                yield CANCEL, None
                return
            yield PENDING, ds
        log.info(
            "move done calling_ae=%s destination=%s instances=%d duration_s=%.3f",
            info.calling_ae,
            dest,
            len(refs),
            time.monotonic() - started,
        )

    def _destination(self, ae_title: str) -> Node | None:
        node = get_node(self.server.db.reader(), ae_title)
        if node is None or node.host == "*":
            return None
        return node

    # ---- C-GET -------------------------------------------------------------------------
    def handle_get(self, event: evt.Event) -> Iterator[Any]:
        info = assoc_info(event.assoc)
        if not permitted(event, "get"):
            yield 1
            yield REFUSED_NOT_AUTHORIZED, None
            return
        try:
            refs = self._matches(event.identifier)
        except BadRequest as exc:
            log.warning("get refused calling_ae=%s reason=%s", info.calling_ae, exc)
            yield 1
            yield IDENTIFIER_DOES_NOT_MATCH, None
            return
        yield len(refs)
        install_file_send(event.assoc)
        install_fast_pending(event.assoc)
        accepted = accepted_syntaxes(event.assoc)
        for n, ref in enumerate(refs):
            if event.is_cancelled:
                log.info("get cancelled calling_ae=%s sent=%d", info.calling_ae, n)
                yield CANCEL, None
                return
            yield PENDING, self._dataset(ref, accepted, info.calling_ae)
        log.info("get done calling_ae=%s instances=%d", info.calling_ae, len(refs))
