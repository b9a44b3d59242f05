"""Sending stored instances to a DICOM peer: context policy and the send loop.

One module decides, for every outbound C-STORE hpacs makes (C-MOVE and C-GET sub-operations,
routing), which presentation contexts to propose and what bytes to send: the stored dataset
bytes as they are when the peer accepted their syntax, converted (edge/transcode.py)
otherwise. `send_all` is the loop: on one association, from one thread, it frames each object
into P-DATA-TF PDUs of the peer's maximum length, writes them, reads and prepares the next
object while the peer stores the current one, then reads the C-STORE response. Where the
bytes come from is one object (`Source`): the cache through edge/locate.py, verified against
the crc32c recorded at ingest while it is read (shared/integrity.py).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Protocol

import pydicom
from pydicom.dataset import Dataset

from edge.dimse import client
from edge.dimse import command as cmd
from edge.dimse.dataset import encode as encode_dataset
from edge.dimse.engine import Association, PeerAborted
from edge.dimse.link import LinkClosed, LinkTimeout
from edge.dimse.negotiation import Context
from edge.dimse.pdu import ProtocolError
from edge.locate import InstanceRef, Locator
from edge.transcode import LOSSLESS_ENCODE_TARGETS, choose, convert, ts_name
from shared.errors import InvalidDataset, NoConversion, PacsError
from shared.registry import Node

log = logging.getLogger("hpacs.edge.sender")

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association
FALLBACK_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # Explicit, Implicit VR LE
Wanted = list[tuple[str, list[str]]]


class Source(Protocol):
    """Where instance bytes come from: the whole Part-10 file, verified (raises PacsError,
    e.g. CorruptInstance or NotFound, for an instance that cannot be served)."""

    def read(self, ref: InstanceRef) -> bytes: ...


class CacheSource:
    """Instance bytes through edge/locate.py (seam 1): from the cache (an evicted row recalled
    first), verified against the crc32c recorded at ingest on the same read; a damaged file is
    quarantined and repaired from its cloud copy, or raises (CorruptInstance, NotFound) and
    fails that one sub-operation with its UID listed. `reader` names the caller in its logs."""

    def __init__(self, locator: Locator, reader: str = "retrieve") -> None:
        self.locator = locator
        self.reader = reader

    def read(self, ref: InstanceRef) -> bytes:
        return self.locator.read(ref, reader=self.reader)


def requested_contexts(refs: Iterable[InstanceRef]) -> Wanted:
    """Contexts to propose for these instances, most useful first, at most 128.

    Tier 1: one context per (SOP class, stored syntax) with that syntax alone, so the peer
    cannot pick a conversion when it accepts what we hold. Tier 2: per SOP class, Explicit and
    Implicit VR Little Endian (decompression fallback). Tier 3: per SOP class, the lossless
    syntaxes we can encode (for peers that accept only those). Truncated tiers are logged.
    """
    stored: dict[str, list[str]] = {}
    for ref in refs:
        syntaxes = stored.setdefault(ref.sop_class_uid, [])
        if ref.transfer_syntax not in syntaxes:
            syntaxes.append(ref.transfer_syntax)
    tier1 = [(sc, [ts]) for sc, tss in stored.items() for ts in tss]
    tier2 = []
    tier3 = []
    for sc, tss in stored.items():
        fallback = [ts for ts in FALLBACK_SYNTAXES if [ts] != tss]
        if fallback:
            tier2.append((sc, fallback))
        encodable = [ts for ts in LOSSLESS_ENCODE_TARGETS if ts not in tss]
        if encodable:
            tier3.append((sc, encodable))
    wanted = tier1 + tier2 + tier3
    if len(wanted) > MAX_CONTEXTS:
        log.warning(
            "too many presentation contexts requested=%d limit=%d: conversion fallbacks dropped",
            len(wanted),
            MAX_CONTEXTS,
        )
    return wanted[:MAX_CONTEXTS]


def accepted_syntaxes(contexts: Mapping[int, Context]) -> dict[str, list[str]]:
    """SOP class -> syntaxes we may send it in (contexts where we have the SCU role)."""
    out: dict[str, list[str]] = {}
    for cx in contexts.values():
        if not cx.as_scu:
            continue
        syntaxes = out.setdefault(cx.abstract_syntax, [])
        if cx.transfer_syntax not in syntaxes:
            syntaxes.append(cx.transfer_syntax)
    return out


def _context_id(contexts: Mapping[int, Context], sop_class: str, ts: str) -> int:
    for cx in contexts.values():
        if cx.as_scu and cx.abstract_syntax == sop_class and cx.transfer_syntax == ts:
            return cx.id
    raise NoConversion(f"no accepted context for {sop_class} in {ts_name(ts)}")


def dataset_offset(data: bytes | memoryview) -> int:
    """Where the dataset starts in a Part-10 file: after the preamble, DICM and the File Meta
    group (explicit VR LE; walked element by element, group length or not)."""
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        raise InvalidDataset("cached object is not a Part-10 file")
    pos = 132
    view = memoryview(data)
    while pos + 8 <= len(view) and view[pos] == 0x02 and view[pos + 1] == 0x00:
        vr = bytes(view[pos + 4 : pos + 6])
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = int.from_bytes(view[pos + 8 : pos + 12], "little")
            pos += 12 + length
        else:
            length = int.from_bytes(view[pos + 6 : pos + 8], "little")
            pos += 8 + length
    if pos > len(view):
        raise InvalidDataset("cached object's File Meta overruns the file")
    return pos


@dataclass
class Outgoing:
    """One prepared C-STORE: the context, the dataset bytes, and what conversion happened."""

    ref: InstanceRef
    context_id: int
    data: memoryview
    converted_to: str = ""


def prepare(
    ref: InstanceRef,
    source: Source,
    contexts: Mapping[int, Context],
    accepted: Mapping[str, list[str]] | None = None,
) -> Outgoing:
    """The bytes to C-STORE for `ref`; raises PacsError (NoConversion, CorruptInstance, ...).
    `accepted` is `accepted_syntaxes(contexts)`, computed once per association by callers."""
    if accepted is None:
        accepted = accepted_syntaxes(contexts)
    plan = choose(ref.transfer_syntax, accepted.get(ref.sop_class_uid, []))
    raw = source.read(ref)
    if plan.as_is:
        cx_id = _context_id(contexts, ref.sop_class_uid, plan.target)
        return Outgoing(ref, cx_id, memoryview(raw)[dataset_offset(raw) :])
    try:
        ds: Dataset = pydicom.dcmread(BytesIO(raw))
    except Exception as exc:
        raise InvalidDataset(f"cannot read the stored object: {exc}") from exc
    ds = convert(ds, plan)
    log.debug(
        "converting sop_instance_uid=%s from=%s to=%s",
        ref.sop_instance_uid,
        plan.source,
        plan.target,
    )
    cx_id = _context_id(contexts, ref.sop_class_uid, plan.target)
    return Outgoing(ref, cx_id, memoryview(encode_dataset(ds, plan.target)), plan.target)


# ---- the send loop ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SubOp:
    sop_instance_uid: str
    outcome: str  # completed | warning | failed
    status: int | None = None
    reason: str = ""
    converted_to: str = ""


@dataclass
class SendReport:
    """Counters and per-instance results of one send; `error` is set when nothing could start."""

    completed: int = 0
    warning: int = 0
    failed: int = 0
    converted: int = 0
    error: str = ""
    results: list[SubOp] = field(default_factory=list)

    def add(self, sub: SubOp) -> None:
        self.results.append(sub)
        setattr(self, sub.outcome, getattr(self, sub.outcome) + 1)
        if sub.converted_to:
            self.converted += 1

    @property
    def failed_uids(self) -> list[str]:
        return [r.sop_instance_uid for r in self.results if r.outcome == "failed"]


def _prepared(
    ref: InstanceRef,
    source: Source,
    assoc: Association,
    peer: str,
    accepted: Mapping[str, list[str]],
) -> Outgoing | SubOp:
    try:
        return prepare(ref, source, assoc.contexts, accepted)
    except PacsError as exc:
        log_failure(ref.sop_instance_uid, str(exc), destination=peer)
        return SubOp(ref.sop_instance_uid, "failed", reason=str(exc))
    except Exception as exc:
        reason = f"cannot read the stored object: {exc}"
        log_failure(ref.sop_instance_uid, reason, destination=peer)
        return SubOp(ref.sop_instance_uid, "failed", reason=reason)


def send_all(
    assoc: Association,
    refs: Sequence[InstanceRef],
    source: Source,
    *,
    peer: str,
    originator: tuple[str, int] | None = None,
) -> Iterator[SubOp]:
    """C-STORE every instance on `assoc`, yielding each outcome as its response arrives.

    The next object is read (and verified, or converted) after the current one is written and
    before its response is read, so disk and peer work overlap. A lost association fails the
    rest (raises LinkClosed/LinkTimeout/PeerAborted to the caller after the last yield).
    """
    if not refs:
        return
    accepted = accepted_syntaxes(assoc.contexts)
    nxt = _prepared(refs[0], source, assoc, peer, accepted)
    for i, ref in enumerate(refs):
        cur = nxt
        if isinstance(cur, SubOp):
            if i + 1 < len(refs):
                nxt = _prepared(refs[i + 1], source, assoc, peer, accepted)
            yield cur
            continue
        message_id = assoc.next_message_id()
        aet, origin_id = originator if originator else (None, None)
        command = cmd.store_rq(
            message_id, ref.sop_class_uid, ref.sop_instance_uid, 2, aet, origin_id
        )
        parts: list[Any] = []
        assoc.frame(cur.context_id, command, True, parts)
        assoc.frame(cur.context_id, cur.data, False, parts)
        assoc.send_parts(parts)
        del parts
        cur.data = memoryview(b"")
        if i + 1 < len(refs):
            nxt = _prepared(refs[i + 1], source, assoc, peer, accepted)
        rsp = assoc.wait_response(message_id)
        status = rsp.command.status
        yield _outcome(ref.sop_instance_uid, status, cur.converted_to)


def _outcome(uid: str, status: int | None, converted: str) -> SubOp:
    if status is None:
        return SubOp(uid, "failed", reason="no C-STORE status", converted_to=converted)
    if status == 0:
        return SubOp(uid, "completed", status, converted_to=converted)
    if status & 0xF000 == 0xB000:
        return SubOp(uid, "warning", status, converted_to=converted)
    return SubOp(uid, "failed", status, f"peer status 0x{status:04X}", converted)


# ---- sending on an association we open (routing) ----------------------------------------------
def send_instances(
    our_ae_title: str,
    node: Node,
    refs: Sequence[InstanceRef],
    source: Source,
    *,
    max_pdu: int = 262144,
    timeout_s: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SendReport:
    """C-STORE `refs` to `node` over ONE association, converting where needed.

    Never raises for a single instance: every instance ends in the report as completed,
    warning (peer status 0xB...) or failed with a reason. If the association cannot be
    established, every instance is failed and `error` says why.
    """
    report = SendReport()
    if not refs:
        return report
    try:
        assoc = client.connect(
            our_ae_title,
            node.host,
            node.port,
            node.ae_title,
            requested_contexts(refs),
            max_pdu=max_pdu,
            timeout_s=timeout_s,
            ssl_context=ssl_context if node.tls else None,
        )
    except client.AssociationFailed as exc:
        report.error = "association rejected" if exc.rejection else f"no association: {exc}"
        for ref in refs:
            report.add(SubOp(ref.sop_instance_uid, "failed", reason=report.error))
        return report
    done: set[str] = set()
    try:
        for sub in send_all(assoc, refs, source, peer=node.ae_title):
            report.add(sub)
            done.add(sub.sop_instance_uid)
            if should_stop is not None and should_stop():
                break
    except (LinkClosed, LinkTimeout, PeerAborted, ProtocolError, cmd.CommandError) as exc:
        log.warning("send to %s ended early: %s", node.ae_title, exc)
        assoc.abort()
    except Exception:
        assoc.abort()
        raise
    finally:
        if not assoc.ended:
            assoc.release()
    for ref in refs:
        if ref.sop_instance_uid not in done:
            reason = (
                "cancelled" if should_stop is not None and should_stop() else "association lost"
            )
            report.add(SubOp(ref.sop_instance_uid, "failed", reason=reason))
    return report


def log_failure(sop_instance_uid: str, reason: str, **keys: Any) -> None:
    extra = " ".join(f"{k}={v}" for k, v in keys.items())
    log.warning(
        "sub-operation failed sop_instance_uid=%s %s reason=%s", sop_instance_uid, extra, reason
    )


__all__ = [
    "CacheSource",
    "Outgoing",
    "SendReport",
    "Source",
    "SubOp",
    "accepted_syntaxes",
    "prepare",
    "requested_contexts",
    "send_all",
    "send_instances",
    "ts_name",
]
