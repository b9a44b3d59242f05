"""C-FIND SCP: parse the identifier, run the query built by `edge.query`, map rows to responses.

The handler is a thin adapter: matching rules live in the pure `edge.query`. Rows are fetched
at once (capped at `edge.find_max_results` + 1) so the read snapshot is short, then streamed
as pending responses, checking for C-CANCEL before each one. Each row is encoded once by
`edge.findwire.RowEncoder`, framed by the association's engine and written in batches.
"""

from __future__ import annotations

import functools
import logging
import queue
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from edge import findwire, query
from edge.access import permitted
from edge.dimse import command as cmd
from edge.dimse import dataset
from edge.dimse.engine import Association, Message
from shared import metrics
from shared.errors import (
    CANCEL,
    CANNOT_UNDERSTAND,
    PENDING,
    REFUSED_NOT_AUTHORIZED,
    SUCCESS,
    PacsError,
    dimse_status,
)
from shared.index import connect

log = logging.getLogger("hpacs.edge.find")

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
FIND_MODELS = {PATIENT_ROOT_FIND: query.PATIENT_ROOT, STUDY_ROOT_FIND: query.STUDY_ROOT}
FIND_SOP_CLASSES = list(FIND_MODELS)
_NOT_QUERIED = ("QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle")
# Responses are written in batches of about this many bytes; C-CANCEL is checked before each one.
FLUSH_BYTES = 16384


class ReaderPool:
    """Read-only connections reused across associations.

    Every association runs in its own thread, so a connection per thread would be opened (and
    kept) once per association; a small pool keeps one per concurrent query.
    """

    def __init__(self, path: Any, size: int = 8) -> None:
        self.path = path
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue(maxsize=size)

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only=ON")
        try:
            yield conn
        finally:
            try:
                self._idle.put_nowait(conn)
            except queue.Full:
                conn.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class FindService:
    """C-FIND, built from the index path, our AE title and the result cap."""

    def __init__(self, db_path: Any, ae_title: str, max_results: int) -> None:
        self.readers = ReaderPool(db_path)
        self.ae_title = ae_title
        self.max_results = max_results

    def handle_find(self, assoc: Association, msg: Message) -> None:
        c, cx = msg.command, msg.context
        info = assoc.info

        def final(status: int) -> None:
            assoc.send(cx.id, cmd.find_rsp(c.message_id, c.sop_class, status, False))

        if not permitted(info, "find"):
            final(REFUSED_NOT_AUTHORIZED)
            return
        started = time.perf_counter()
        cap = self.max_results
        model = FIND_MODELS.get(c.sop_class, query.STUDY_ROOT)
        try:
            identifier = dataset.decode(msg.data, cx.transfer_syntax)
            requested = {e.keyword: e.value for e in identifier if e.keyword}
            q = query.build(requested, model, limit=cap + 1)
            with self.readers.connection() as conn:
                rows = conn.execute(q.sql, q.params).fetchall()
        except PacsError as exc:
            log.warning(
                "find refused calling_ae=%s status=0x%04X error=%s",
                info.calling_ae,
                dimse_status(exc),
                exc,
            )
            final(dimse_status(exc))
            return
        except dataset.DatasetError as exc:
            log.warning("find refused calling_ae=%s status=0xC000 error=%s", info.calling_ae, exc)
            final(CANNOT_UNDERSTAND)
            return
        except Exception:
            log.exception("find failed calling_ae=%s", info.calling_ae)
            final(CANNOT_UNDERSTAND)
            return
        if len(rows) > cap:
            log.warning(
                "find truncated calling_ae=%s level=%s max_results=%d",
                info.calling_ae,
                q.level,
                cap,
            )
            rows = rows[:cap]
        extras = _extras(identifier, q, self.ae_title)
        pending = cmd.find_rsp(c.message_id, c.sop_class, PENDING, True)
        encode = row_encoder(q, extras, cx.transfer_syntax)
        batch: list[Any] = []
        size = sent = 0
        for row in rows:
            if assoc.cancelled(c.message_id):
                if batch:
                    assoc.send_bytes(b"".join(batch))
                log.info("find cancelled calling_ae=%s sent=%d", info.calling_ae, sent)
                final(CANCEL)
                return
            ident = encode(row)
            assoc.frame(cx.id, pending, True, batch)
            assoc.frame(cx.id, ident, False, batch)
            size += len(ident) + len(pending) + 24
            sent += 1
            if size >= FLUSH_BYTES:
                assoc.send_bytes(b"".join(batch))
                batch, size = [], 0
        assoc.frame(cx.id, cmd.find_rsp(c.message_id, c.sop_class, SUCCESS, False), True, batch)
        assoc.send_bytes(b"".join(batch))
        log.info(
            "find calling_ae=%s level=%s results=%d duration_ms=%.1f",
            info.calling_ae,
            q.level,
            sent,
            (time.perf_counter() - started) * 1000,
        )
        metrics.observe_query(q.level, time.perf_counter() - started)

    def close(self) -> None:
        self.readers.close()


def _extras(identifier: Dataset, q: query.Query, ae_title: str) -> list[tuple[Any, str, Any]]:
    """Requested keys we do not index come back empty; RetrieveAETitle is this node."""
    out: list[tuple[Any, str, Any]] = []
    for elem in identifier:
        if elem.keyword in _NOT_QUERIED[:2] or elem.keyword in q.keywords:
            continue
        if elem.keyword == "RetrieveAETitle":
            out.append((elem.tag, "AE", ae_title))
        elif elem.keyword in q.unsupported or not elem.keyword:
            out.append((elem.tag, elem.VR, [] if elem.VR == "SQ" else None))
    return out


def response_elements(
    q: query.Query, row: Any, extras: list[tuple[Any, str, Any]]
) -> tuple[list[findwire.Element], bool]:
    """One pending response identifier as (tag, VR, value) triples, and whether it is UTF-8.

    Declares ISO_IR 192 only when a value needs it (legacy SCUs). Tags and VRs come from the
    dictionary; values come from our own index, validated at ingest, so no re-validation.
    """
    values = query.row_values(q, row)
    out: list[findwire.Element] = []
    utf8 = query.needs_unicode(values.values())
    if utf8:
        out.append((_SPECIFIC_CHARACTER_SET, "CS", "ISO_IR 192"))
    out.append((_QUERY_RETRIEVE_LEVEL, "CS", q.level))
    for keyword, value in values.items():
        tag, vr = _tag_vr(keyword)
        out.append((tag, vr, value))
    out.extend((int(tag), vr, value) for tag, vr, value in extras)
    return out, utf8


def response(q: query.Query, row: Any, extras: list[tuple[Any, str, Any]]) -> Dataset:
    """The same identifier as a pydicom Dataset (benchmarks, tests, the fallback encoder)."""
    return findwire.as_dataset(response_elements(q, row, extras)[0])


def identifier_bytes(
    q: query.Query, row: Any, extras: list[tuple[Any, str, Any]], transfer_syntax: str
) -> bytes:
    """The encoded identifier: directly for implicit/explicit VR LE, else through pydicom."""
    elements, utf8 = response_elements(q, row, extras)
    if transfer_syntax in (findwire.IMPLICIT_LE, findwire.EXPLICIT_LE):
        try:
            return findwire.encode_identifier(
                elements, transfer_syntax == findwire.EXPLICIT_LE, utf8
            )
        except (findwire.Unencodable, UnicodeEncodeError, struct.error, ValueError):
            pass
    return findwire.dataset_bytes(findwire.as_dataset(elements), transfer_syntax)


def row_encoder(
    q: query.Query, extras: list[tuple[Any, str, Any]], transfer_syntax: str
) -> Callable[[Any], bytes]:
    """Row -> encoded identifier for one query: `findwire.RowEncoder` for implicit/explicit VR
    little endian (set up once per query), else `identifier_bytes` (pydicom) per row."""
    if transfer_syntax in (findwire.IMPLICIT_LE, findwire.EXPLICIT_LE):
        columns = [(*_tag_vr(k), query.ATTRS[k].kind) for k in q.keywords]
        constants = [(_QUERY_RETRIEVE_LEVEL, "CS", q.level)]
        constants += [(int(tag), vr, value) for tag, vr, value in extras]
        try:
            fast = findwire.RowEncoder(columns, constants, transfer_syntax == findwire.EXPLICIT_LE)
        except findwire.Unencodable:
            pass
        else:

            def encode(row: Any) -> bytes:
                try:
                    return fast.encode(row)
                except (findwire.Unencodable, UnicodeEncodeError, struct.error, ValueError):
                    return identifier_bytes(q, row, extras, transfer_syntax)

            return encode
    return lambda row: identifier_bytes(q, row, extras, transfer_syntax)


_SPECIFIC_CHARACTER_SET = 0x00080005
_QUERY_RETRIEVE_LEVEL = 0x00080052


@functools.cache
def _tag_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - ATTRS holds dictionary keywords only
        raise KeyError(keyword)
    return tag, dictionary_VR(tag)
