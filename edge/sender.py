"""Sending stored instances to a DICOM peer: contexts, per-instance preparation, C-STORE.

One module decides, for every outbound C-STORE hpacs makes (C-MOVE sub-operations, C-GET
sub-operations, routing), which presentation contexts to propose and what bytes to send:
the stored dataset as-is when the peer accepted its syntax, converted (edge/transcode.py)
otherwise. `send_instances` is the public entry for callers that own the association
(routing); C-MOVE and C-GET go through pynetdicom's retrieve service, which owns the store
association, and use `requested_contexts`, `accepted_syntaxes` and `prepare` from here.
"""

from __future__ import annotations

import io
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket

from edge.locate import InstanceRef
from edge.scu import associate, set_nodelay
from edge.transcode import (
    LOSSLESS_ENCODE_TARGETS,
    Plan,
    choose,
    convert,
    ts_name,
)
from shared.errors import PacsError
from shared.registry import Node

log = logging.getLogger("hpacs.edge.sender")

# send_c_store(path) streams the dataset from the file instead of decoding it (pynetdicom
# reads this at send time; hpacs sends files only through install_file_send).
_config.STORE_SEND_CHUNKED_DATASET = True

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association
FALLBACK_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # Explicit, Implicit VR LE
# Outbound DUL threads only read responses (stream_file writes the data itself); a 0.1 ms
# poll made them hold the GIL ~10,000 times a second against the sending thread.
DUL_LOOP_DELAY_S = 0.0005

# An instance's cache path and its bytes, verified against the index (edge.locate.Locator.read_at)
Locate = Callable[[InstanceRef], tuple[Path, bytes]]


def requested_contexts(refs: Iterable[InstanceRef]) -> list[PresentationContext]:
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
    return [build_context(sc, tss) for sc, tss in wanted[:MAX_CONTEXTS]]


def accepted_syntaxes(assoc: Association) -> dict[str, list[str]]:
    """SOP class -> syntaxes we may send it in, from the contexts the peer accepted for us."""
    out: dict[str, list[str]] = {}
    for cx in assoc.accepted_contexts:
        if cx.as_scu is False:
            continue
        syntaxes = out.setdefault(str(cx.abstract_syntax), [])
        for ts in cx.transfer_syntax:
            if str(ts) not in syntaxes:
                syntaxes.append(str(ts))
    return out


def prepare(
    ref: InstanceRef, located: tuple[Path, bytes], accepted: dict[str, list[str]]
) -> tuple[Dataset, Plan]:
    """The dataset to C-STORE for `ref`, converted when the peer needs another syntax.

    `located` is the cache path and the bytes already verified against the index
    (edge/locate.py). When the peer accepted the stored syntax, the result is a placeholder
    carrying them: an association with `install_file_send` sends those dataset bytes unchanged
    (bit-identical, no decode or re-encode). Raises NoConversion or InvalidDataset.
    """
    path, data = located
    plan = choose(ref.transfer_syntax, accepted.get(ref.sop_class_uid, []))
    if plan.as_is:
        return file_placeholder(ref, path, data), plan
    ds = pydicom.dcmread(io.BytesIO(data))
    return convert(ds, plan), plan


class FilePlaceholder(Dataset):
    """Stands for a cache file in pynetdicom's retrieve loop (which accepts only Datasets);
    the UIDs are plain attributes, read as properties, so no element is built or validated.
    It is truthy although it holds no element: pynetdicom tests `if dataset`."""

    def __bool__(self) -> bool:
        return True

    @property
    def SOPClassUID(self) -> str:  # type: ignore[override]
        return str(self.hpacs_uids[0])

    @property
    def SOPInstanceUID(self) -> str:  # type: ignore[override]
        return str(self.hpacs_uids[1])


def file_placeholder(ref: InstanceRef, path: Path, data: bytes | None = None) -> Dataset:
    ds = FilePlaceholder()
    object.__setattr__(ds, "hpacs_path", path)
    object.__setattr__(ds, "hpacs_data", data)  # the verified file bytes, when read already
    object.__setattr__(
        ds, "hpacs_uids", (ref.sop_class_uid, ref.sop_instance_uid, ref.transfer_syntax)
    )
    return ds


class ParkingGate:
    """A drop-in for pynetdicom's `Association._reactor_checkpoint` on outbound associations:
    the reactor is parked once, for the whole run of C-STOREs.

    pynetdicom pauses a requestor's reactor before each send by clearing the checkpoint and
    polling `_is_paused`, which the reactor sets *before* it waits: a reactor that just passed
    the wait still reads one message, and if that is our C-STORE response, the send waits for
    the whole DIMSE timeout ("Received unexpected C-STORE service message"); under load this
    hit about one move in a few hundred sub-operations. `hold()` returns once the reactor
    thread is blocked inside `wait()` and keeps it there (pynetdicom's per-send `set()` is
    ignored) until the association is killed or aborted: no race, and no wait of up to one
    reactor poll (1 ms) before every sub-operation. Nothing else needs the reactor while we
    are the only side sending requests.
    """

    def __init__(self, must_open: Callable[[], bool]) -> None:
        self._cond = threading.Condition()
        self._open = True
        self._parked = False
        self._held = False
        self._must_open = must_open

    def set(self) -> None:
        with self._cond:
            if self._held and not self._must_open():
                return
            self._held = False
            self._open = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._open = False

    def is_set(self) -> bool:
        return self._open

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            while not self._open:
                self._parked = True
                self._cond.notify_all()
                try:
                    if not self._cond.wait(timeout if timeout is not None else 0.5):
                        if timeout is not None:
                            return False
                        if self._must_open():  # killed without set(): let the loop end
                            self._open = True
                finally:
                    self._parked = False
            return True

    def release(self) -> None:
        """End a hold: the reactor runs again."""
        with self._cond:
            self._held = False
            self._open = True
            self._cond.notify_all()

    def hold(self, alive: Callable[[], bool], timeout_s: float = 5.0) -> None:
        with self._cond:
            if self._held:
                return
            self._open = False
            deadline = time.monotonic() + timeout_s
            while not self._parked and alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.05))
            self._held = True


@contextmanager
def reactor_held(assoc: Association) -> Iterator[None]:
    """Park an association's reactor for a few requests sent from another thread (e.g. a
    Storage Commitment report on an inbound association), so it cannot take their responses."""
    old = assoc._reactor_checkpoint
    gate = ParkingGate(lambda: assoc._kill or assoc._sent_abort or not assoc.dul.is_alive())
    assoc._reactor_checkpoint = gate  # type: ignore[assignment]
    try:
        gate.hold(lambda: assoc.is_alive() and not assoc._kill)
        yield
    finally:
        assoc._reactor_checkpoint = old
        gate.release()


def install_file_send(assoc: Association) -> None:
    """Make `assoc.send_c_store` stream placeholders' cache files instead of encoding datasets.

    pynetdicom's retrieve loop only hands Dataset objects to `send_c_store`, while its own
    file-streaming send needs a path: this per-association hook bridges the two, so stored
    objects leave the cache byte for byte (PS3.4 retrieve fidelity, and far less CPU).
    """
    if getattr(assoc, "hpacs_file_send", False):
        return
    original = assoc.send_c_store

    def send_c_store(dataset: Any, *args: Any, **kwargs: Any) -> Dataset:
        gate = assoc._reactor_checkpoint
        if isinstance(gate, ParkingGate) and assoc.is_established:
            gate.hold(lambda: assoc.is_alive() and not assoc._kill)
        path = getattr(dataset, "hpacs_path", None)
        if path is None:
            return original(dataset, *args, **kwargs)
        if _can_stream(assoc):
            uids = getattr(dataset, "hpacs_uids", None)
            return stream_file(assoc, path, *args, uids=uids, placeholder=dataset, **kwargs)
        # TLS or an inbound association: pynetdicom re-reads the file it was just verified
        # from (the page cache), until the DIMSE rewrite sends the verified bytes themselves.
        return original(path, *args, **kwargs)

    assoc.send_c_store = send_c_store  # type: ignore[method-assign]
    assoc.hpacs_file_send = True  # type: ignore[attr-defined]


def failure_stub(ref: InstanceRef) -> Dataset:
    """A dataset pynetdicom's retrieve service cannot send, so it counts a failed sub-operation
    and lists the SOP Instance UID; used when we could not prepare the real one."""
    ds = Dataset()
    ds.SOPClassUID = ref.sop_class_uid
    ds.SOPInstanceUID = ref.sop_instance_uid
    return ds  # no file meta: pynetdicom refuses it before anything goes on the wire


def tune(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler for outbound associations: no Nagle, a short reactor delay,
    a race-free reactor pause, cache files streamed as they are. Runs before the reactor
    loop starts (the association is not yet negotiated)."""
    tune_association(event.assoc)
    a = event.assoc
    if type(a.dul.socket) is AssociationSocket:
        a.dul.socket.__class__ = QuietSocket
        a.dul.socket.hpacs_lock = threading.Lock()  # type: ignore[attr-defined]
    a._reactor_checkpoint = ParkingGate(  # type: ignore[assignment]
        lambda: a._kill or a._sent_abort or not a.dul.is_alive()
    )
    install_file_send(event.assoc)


def tune_association(assoc: Association) -> None:
    set_nodelay(assoc)
    assoc.dul._run_loop_delay = DUL_LOOP_DELAY_S


def _can_stream(assoc: Association) -> bool:
    """Direct socket writes need a plain socket that nothing else writes to and a reactor that
    cannot take our response: our outbound associations (ParkingGate, QuietSocket). Not an
    inbound association (C-GET): its DUL thread sends the queued pending responses, which a
    direct write could interleave with."""
    sock = assoc.dul.socket.socket if assoc.dul.socket else None
    if sock is None or isinstance(sock, ssl.SSLSocket) or not assoc.is_established:
        return False
    return isinstance(assoc._reactor_checkpoint, ParkingGate) and isinstance(
        assoc.dul.socket, QuietSocket
    )


def stream_file(
    assoc: Association,
    path: Path,
    msg_id: int = 1,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
    *,
    uids: tuple[str, str, str] | None = None,
    placeholder: Dataset | None = None,
) -> Dataset:
    """C-STORE a Part-10 file's dataset bytes as they are, written straight to the socket.

    pynetdicom sends each P-DATA PDU through its DUL thread (a queue hop, a state-machine step
    and an event per 16 KB PDU) and encodes the command with pydicom; for 0.5 MB objects that
    cost more than the network. Here the command (implicit VR, a handful of fixed elements)
    and the dataset are framed into P-DATA-TF PDUs of the peer's maximum length in one buffer
    and written with one sendall. P-DATA does not change the association's state (Sta6), so
    the state machine is unaffected. `uids` are (SOP class, SOP instance, transfer syntax)
    from the index; without them the file meta is parsed. While the peer works on this
    object, the next placeholder's file (`hpacs_next`) is read and framed.
    """
    framed = getattr(placeholder, "hpacs_framed", None)
    if framed is None:
        framed = _frame_dataset(assoc, path, uids, getattr(placeholder, "hpacs_data", None))
    cx_id, frag, (sop_class, sop_instance, _), data_parts = framed
    command = store_command(
        sop_class, sop_instance, msg_id, priority, originator_aet, originator_id
    )
    parts: list[Any] = []
    _frame(parts, cx_id, command, frag, 0x01, 0x03)
    parts += data_parts
    wrapper = assoc.dul.socket
    quiet = isinstance(wrapper, QuietSocket)
    if quiet:
        with wrapper.hpacs_lock:  # type: ignore[union-attr]
            wrapper.hpacs_quiet = True  # type: ignore[union-attr]
    try:
        wrapper.socket.sendall(b"".join(parts))  # type: ignore[union-attr]
        _prefetch(assoc, getattr(placeholder, "hpacs_next", None))
        if quiet:
            status = read_status(wrapper.socket, assoc.dimse_timeout)  # type: ignore[union-attr, arg-type]
            assoc.dul._idle_timer.restart()
            if status is None:  # not a P-DATA response (abort, release) or timed out
                assoc.abort()
                return Dataset()
            return _status_dataset(status)
    finally:
        if quiet:
            wrapper.hpacs_quiet = False  # type: ignore[union-attr]
    _, rsp = assoc.dimse.get_msg(block=True)
    if rsp is None:
        assoc._handle_no_response()
        return Dataset()
    return assoc._check_received_status(rsp)


Framed = tuple[int, int, tuple[str, str, str], list[Any]]


def _frame_dataset(
    assoc: Association, path: Path, uids: tuple[str, str, str] | None, data: bytes | None = None
) -> Framed:
    """The dataset bytes of a cache file (or of its verified `data`) as P-DATA-TF PDUs for
    `assoc`'s context."""
    with open(path, "rb") if data is None else io.BytesIO(data) as fh:  # where the dataset starts
        offset = _dataset_offset(fh) if uids is not None else None
        if offset is None or uids is None:
            fh.seek(0)
            read_preamble(fh, False)
            meta = _read_file_meta_info(fh)
            offset = fh.tell()
            uids = (
                str(meta.MediaStorageSOPClassUID),
                str(meta.MediaStorageSOPInstanceUID),
                str(meta.TransferSyntaxUID),
            )
        fh.seek(offset)
        data = fh.read()
    cx = assoc._get_valid_context(uids[0], uids[2], "scu", allow_conversion=False)
    cx_id = int(cx.context_id)  # type: ignore[arg-type]
    max_pdu = assoc.dimse.maximum_pdu_size
    frag = max_pdu - 6 if max_pdu else max(len(data), 1024)
    parts: list[Any] = []
    _frame(parts, cx_id, data, frag, 0x00, 0x02)
    return cx_id, frag, uids, parts


def _prefetch(assoc: Association, nxt: Dataset | None) -> None:
    """Read and frame the next file while the peer stores the current one; any problem is
    left for the real send to report."""
    path = getattr(nxt, "hpacs_path", None)
    if nxt is None or path is None:
        return
    try:
        uids = getattr(nxt, "hpacs_uids", None)
        framed = _frame_dataset(assoc, path, uids, getattr(nxt, "hpacs_data", None))
    except Exception:
        return
    object.__setattr__(nxt, "hpacs_framed", framed)


class QuietSocket(AssociationSocket):
    """pynetdicom's socket wrapper, silent towards the DUL while stream_file reads a response.

    The DUL thread reads the socket when `ready`; while we wait for our own C-STORE response
    it must not, so `ready` says no. Reading the response here saves the DUL's poll, its
    PDU/DIMSE decoding with pydicom and a queue hop per instance.
    """

    hpacs_quiet = False
    # Check and select under one lock: a DUL thread that saw "not quiet" must not select
    # after our request went out, or it could take the response (seen under load: a 60 s
    # DIMSE timeout, then an abort).
    hpacs_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        with self.hpacs_lock:
            if self.hpacs_quiet:
                return False
            return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                return None
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_status(sock: socket.socket, timeout_s: float | None) -> int | None:
    """Read one DIMSE response command from P-DATA-TF PDUs and return its Status (0000,0900);
    None for any other PDU (A-ABORT, A-RELEASE) or a timeout."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    command = bytearray()
    while True:
        header = _recv_exact(sock, 6, deadline)
        if header is None:
            return None
        pdu_type, _, length = struct.unpack(">BBI", header)
        body = _recv_exact(sock, length, deadline)
        if body is None or pdu_type != 0x04:
            return None
        i = 0
        while i + 6 <= len(body):
            (item_len,) = struct.unpack(">I", body[i : i + 4])
            control = body[i + 5]
            if control & 0x01:
                command += body[i + 6 : i + 4 + item_len]
                if control & 0x02:
                    return _command_status(bytes(command))
            i += 4 + item_len


def _command_status(command: bytes) -> int | None:
    i = 0
    while i + 8 <= len(command):
        group, elem, length = struct.unpack("<HHI", command[i : i + 8])
        if (group, elem) == (0x0000, 0x0900) and length == 2:
            return int(struct.unpack("<H", command[i + 8 : i + 10])[0])
        i += 8 + length
    return None


_STATUS_DATASETS: dict[int, Dataset] = {}


def _status_dataset(status: int) -> Dataset:
    """A (shared, read-only) status dataset per value: callers only read `.Status`."""
    ds = _STATUS_DATASETS.get(status)
    if ds is None:
        ds = Dataset()
        ds.Status = status
        _STATUS_DATASETS[status] = ds
    return ds


def _dataset_offset(fh: Any) -> int | None:
    """Where the dataset starts: after the preamble, DICM and the (0002,0000) group length."""
    head = fh.read(144)
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    group, elem, vr, length, value = struct.unpack("<HH2sHI", head[132:144])
    if (group, elem, vr, length) != (2, 0, b"UL", 4):
        return None
    return 144 + int(value)


def _element(group_elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, group_elem, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def store_command(
    sop_class: str,
    sop_instance: str,
    msg_id: int,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> bytes:
    """A C-STORE-RQ command set, implicit VR little endian (PS3.7 9.3.1.1), in tag order."""
    body = [
        _element(0x0002, _text(sop_class, b"\0")),
        _element(0x0100, struct.pack("<H", 0x0001)),  # Command Field: C-STORE-RQ
        _element(0x0110, struct.pack("<H", msg_id)),
        _element(0x0700, struct.pack("<H", priority)),
        _element(0x0800, struct.pack("<H", 0x0001)),  # a data set follows
        _element(0x1000, _text(sop_instance, b"\0")),
    ]
    if originator_aet:
        body.append(_element(0x1030, _text(originator_aet.strip(), b" ")))
    if originator_id is not None:
        body.append(_element(0x1031, struct.pack("<H", originator_id)))
    payload = b"".join(body)
    return _element(0x0000, struct.pack("<I", len(payload))) + payload


def _frame(parts: list[Any], cx_id: int, data: bytes, frag: int, more: int, last: int) -> None:
    """P-DATA-TF PDUs, one PDV each (PS3.8 9.3.5): type 04, length, item length, context ID,
    message control header (bit 0 command, bit 1 last fragment)."""
    view = memoryview(data)
    for start in range(0, max(len(data), 1), frag):
        chunk = view[start : start + frag]
        header = last if start + frag >= len(data) else more
        parts.append(struct.pack(">BBIIBB", 0x04, 0, len(chunk) + 6, len(chunk) + 2, cx_id, header))
        parts.append(chunk)  # type: ignore[arg-type]  # join takes any buffer


# ---- sending on an association we own (routing) -----------------------------------------
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


def send_instances(
    our_ae_title: str,
    node: Node,
    refs: Sequence[InstanceRef],
    locate: Locate,
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
    ae = AE(ae_title=our_ae_title)
    for cx in requested_contexts(refs):
        ae.add_requested_context(str(cx.abstract_syntax), cx.transfer_syntax)
    assoc = associate(
        ae,
        node,
        ssl_context=ssl_context,
        timeout_s=timeout_s,
        max_pdu=max_pdu,
        evt_handlers=[(evt.EVT_CONN_OPEN, tune)],
    )
    if not assoc.is_established:
        report.error = "association rejected" if assoc.is_rejected else "no association"
        for ref in refs:
            report.add(SubOp(ref.sop_instance_uid, "failed", reason=report.error))
        return report
    try:
        accepted = accepted_syntaxes(assoc)
        for ref in refs:
            if should_stop is not None and should_stop():
                report.add(SubOp(ref.sop_instance_uid, "failed", reason="cancelled"))
                continue
            report.add(_send_one(assoc, ref, locate, accepted))
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return report


def _send_one(
    assoc: Association, ref: InstanceRef, locate: Locate, accepted: dict[str, list[str]]
) -> SubOp:
    uid = ref.sop_instance_uid
    try:
        ds, plan = prepare(ref, locate(ref), accepted)
    except PacsError as exc:
        log_failure(uid, str(exc), node_ae=assoc.acceptor.ae_title)
        return SubOp(uid, "failed", reason=str(exc))
    except Exception as exc:
        log_failure(uid, f"cannot read the stored object: {exc}", node_ae=assoc.acceptor.ae_title)
        return SubOp(uid, "failed", reason=f"cannot read the stored object: {exc}")
    converted = "" if plan.as_is else plan.target
    if not assoc.is_established:
        return SubOp(uid, "failed", reason="association lost")
    try:
        rsp = assoc.send_c_store(ds)
    except Exception as exc:
        return SubOp(uid, "failed", reason=f"C-STORE not sent: {exc}", converted_to=converted)
    status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
    if status is None:
        return SubOp(uid, "failed", reason="no C-STORE response", converted_to=converted)
    if status == 0:
        return SubOp(uid, "completed", status, converted_to=converted)
    if status & 0xF000 == 0xB000:
        return SubOp(uid, "warning", status, converted_to=converted)
    return SubOp(uid, "failed", status, f"peer status 0x{status:04X}", converted)


def log_failure(sop_instance_uid: str, reason: str, **keys: Any) -> None:
    extra = " ".join(f"{k}={v}" for k, v in keys.items())
    log.warning(
        "sub-operation failed sop_instance_uid=%s %s reason=%s", sop_instance_uid, extra, reason
    )


__all__ = [
    "SendReport",
    "SubOp",
    "accepted_syntaxes",
    "failure_stub",
    "prepare",
    "requested_contexts",
    "send_instances",
    "ts_name",
]
