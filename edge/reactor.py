"""Event-driven replacements for pynetdicom 3.0's two polling loops, installed per association.

Why: pynetdicom's DUL thread polls its socket and queues with `time.sleep(_run_loop_delay)` and
the association thread polls for decoded DIMSE messages with `time.sleep(0.001)`. The first
burns CPU (and the GIL) while idle, the second adds up to 1 ms to every C-STORE; profiling with
py-spy showed both on the ingest path (docs/ARCHITECTURE.md, "Ingest performance").

The loops below are the library's own loops (pynetdicom 3.0.4, `dul.py` `run_reactor`,
`association.py` `_run_reactor`) with each sleep replaced by a blocking wait that wakes when
work arrives: the DUL thread blocks in `select()` on the socket plus a wake-up pipe written by
`to_provider_queue.put()`; the association thread waits on the DIMSE message queue's
condition. Every other step, and its order, is unchanged. `install()` is called from
EVT_CONN_OPEN, before pynetdicom starts either thread; a pynetdicom upgrade must re-check
this module against the library's loops (`PYNETDICOM_VERSION` guards it).
"""

from __future__ import annotations

import logging
import os
import queue
import select
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any

import pynetdicom
from pynetdicom import dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import make_target

log = logging.getLogger("hpacs.edge.reactor")

PYNETDICOM_VERSION = "3.0.4"
# Longest the DUL thread blocks without any event: bounds how late it notices a kill or an
# expired ARTIM timer (both only matter while an association closes).
DUL_IDLE_WAIT_S = 0.005
# Longest the association thread waits for a DIMSE message before its other checks
# (release/abort requested, DUL alive, network timeout).
ASSOC_IDLE_WAIT_S = 0.005

ENABLED = pynetdicom.__version__ == PYNETDICOM_VERSION
if not ENABLED:  # pragma: no cover - guarded upgrade path
    log.warning(
        "pynetdicom %s is not %s: keeping its polling reactors",
        pynetdicom.__version__,
        PYNETDICOM_VERSION,
    )


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """The DUL's to_provider_queue: a put also wakes the DUL thread out of select()."""

    def __init__(self, wake_fd: int) -> None:
        super().__init__()
        self._wake_fd = wake_fd
        self._fd_lock = threading.Lock()

    def close_fd(self) -> None:
        """Close the pipe's write end; later puts must not write to a reused descriptor."""
        with self._fd_lock:
            fd, self._wake_fd = self._wake_fd, -1
        if fd >= 0:
            os.close(fd)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        try:
            with self._fd_lock:
                if self._wake_fd >= 0:
                    os.write(self._wake_fd, b"x")
        except OSError:  # pipe full (already awake) or closed (association ended)
            pass


class _InlineQueue(queue.Queue):  # type: ignore[type-arg]
    """The DIMSE message queue: C-STORE and C-ECHO requests are served in the DUL thread.

    Why: handing every request to the association thread and its response back to the DUL
    thread costs two thread wake-ups per instance, each a scheduling delay on a loaded machine
    (and GIL hand-offs). A C-STORE's peer waits for the response anyway (no asynchronous
    operations are negotiated), so serving it where it was decoded changes no ordering: the
    response goes on to_provider_queue and the same thread sends it on its next loop. Other
    requests (C-FIND, C-MOVE, C-GET, which stream responses, watch for C-CANCEL or run
    sub-operations) still go to the association thread.
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, msg = item
        # Only once the association thread has marked the association established: a fast
        # peer's first request can arrive before that, and pynetdicom's service classes then
        # drop the response (seen as a hung echoscu); the association thread serves it.
        if (
            isinstance(msg, (C_STORE, C_ECHO))
            and msg.is_valid_request
            and self._assoc.is_established
            and not self.qsize()
        ):
            self._assoc._serve_request(msg, context_id)
            return
        super().put(item, block, timeout)


def _element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, elem, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def encode_store_rsp(message_id: int, sop_class: str, sop_instance: str, status: int) -> bytes:
    """The command set of a C-STORE-RSP without optional elements (implicit VR LE).

    Byte-for-byte what pynetdicom builds through a pydicom Dataset and write_dataset, which
    profiling showed at ~15% of the CPU per small instance (tests/test_reactor.py compares).
    """
    body = (
        _element(0x0002, _uid(sop_class))
        + _element(0x0100, struct.pack("<H", 0x8001))
        + _element(0x0120, struct.pack("<H", message_id))
        + _element(0x0800, struct.pack("<H", 0x0101))
        + _element(0x0900, struct.pack("<H", status))
        + _element(0x1000, _uid(sop_instance))
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _fast_send_msg(assoc: Association) -> Callable[[Any, int], None]:
    """dimse.send_msg with C-STORE-RSP encoded directly when it has no optional elements."""
    dimse = assoc.dimse
    slow = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if (
            type(primitive) is C_STORE
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and primitive.AffectedSOPClassUID is not None
            and primitive.AffectedSOPInstanceUID is not None
            and isinstance(primitive.Status, int)
            and not assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            try:
                command = encode_store_rsp(
                    primitive.MessageIDBeingRespondedTo,
                    str(primitive.AffectedSOPClassUID),
                    str(primitive.AffectedSOPInstanceUID),
                    primitive.Status,
                )
            except (UnicodeEncodeError, struct.error):
                command = b""
            limit = dimse.maximum_pdu_size
            if command and (not limit or len(command) + 6 <= limit):
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
                assoc.dul.send_pdu(pdata)
                return
        slow(primitive, context_id)

    return send_msg


class _MetaBytes:
    """File meta already encoded; what `_create_file_meta` hands to `_write_file_meta_info`."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _explicit(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH", 0x0002, elem) + b"OB\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", 0x0002, elem) + vr + struct.pack("<H", len(value)) + value


def encode_file_meta(
    sop_class: str, sop_instance: str, transfer_syntax: str, impl_uid: str, impl_version: str
) -> bytes:
    """The File Meta group (explicit VR LE) pynetdicom writes before a spooled C-STORE dataset.

    Byte-for-byte what `create_file_meta` + pydicom's `write_file_meta_info` produce (tested),
    which cost ~12% of the CPU per small instance through pydicom Datasets.
    """
    version = impl_version.encode("ascii")
    version += b" " if len(version) % 2 else b""
    body = (
        _explicit(0x0001, b"OB", b"\x00\x01")
        + _explicit(0x0002, b"UI", _uid(sop_class))
        + _explicit(0x0003, b"UI", _uid(sop_instance))
        + _explicit(0x0010, b"UI", _uid(transfer_syntax))
        + _explicit(0x0012, b"UI", _uid(impl_uid))
        + _explicit(0x0013, b"SH", version)
    )
    return _explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body


_slow_create_file_meta = dimse_messages.create_file_meta
_slow_write_file_meta_info = dimse_messages.write_file_meta_info
_META_DEFAULTS = _slow_create_file_meta.__kwdefaults__ or {}
_META_KEYS = {"sop_class_uid", "sop_instance_uid", "transfer_syntax"}


def _plain(value: Any) -> bool:
    return isinstance(value, str) and value == value.strip() and "\0" not in value


def _create_file_meta(**kwargs: Any) -> Any:
    impl_uid = _META_DEFAULTS.get("implementation_uid")
    impl_version = _META_DEFAULTS.get("implementation_version")
    values = [kwargs.get(k) for k in ("sop_class_uid", "sop_instance_uid", "transfer_syntax")]
    if set(kwargs) != _META_KEYS or not all(_plain(v) for v in (*values, impl_uid, impl_version)):
        return _slow_create_file_meta(**kwargs)
    cls, inst, syntax = (str(v) for v in values)
    try:
        return _MetaBytes(encode_file_meta(cls, inst, syntax, str(impl_uid), str(impl_version)))
    except (UnicodeEncodeError, struct.error):
        return _slow_create_file_meta(**kwargs)


def _write_file_meta_info(fp: Any, file_meta: Any, *args: Any, **kwargs: Any) -> None:
    if isinstance(file_meta, _MetaBytes):
        fp.write(file_meta.data)
        return
    _slow_write_file_meta_info(fp, file_meta, *args, **kwargs)


if ENABLED:
    # Module-level names pynetdicom's chunked C-STORE receive calls (dimse_messages only).
    dimse_messages.create_file_meta = _create_file_meta
    dimse_messages.write_file_meta_info = _write_file_meta_info


def install(assoc: Association) -> None:
    """Swap both loops of one acceptor association; call before the association starts."""
    if not ENABLED:
        return
    assoc.dimse.msg_queue = _InlineQueue(assoc)
    assoc.dimse.send_msg = _fast_send_msg(assoc)  # type: ignore[method-assign,assignment]
    dul = assoc.dul
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    dul.to_provider_queue = _WakingQueue(wfd)
    dul._target = make_target(lambda: _dul_loop(dul, rfd, wfd))  # type: ignore[attr-defined]
    assoc._run_reactor = lambda: _assoc_loop(assoc)  # type: ignore[method-assign]


def _wait_for_work(dul: DULServiceProvider, rfd: int) -> None:
    """Block until the socket is readable, a primitive is queued, or the idle wait ends."""
    if dul.to_provider_queue.qsize():
        return
    sock = dul.socket.socket if dul.socket is not None else None
    if sock is None or not dul.socket._is_connected:  # type: ignore[union-attr]
        select.select([rfd], [], [], DUL_IDLE_WAIT_S)
    elif isinstance(sock, ssl.SSLSocket) and sock.pending():
        return
    else:
        try:
            readable: list[Any] = [sock, rfd]
            select.select(readable, [], [], DUL_IDLE_WAIT_S)
        except (OSError, ValueError):  # closed under us: the next loop reports Evt17
            return
    try:
        while os.read(rfd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass


def _dul_loop(dul: DULServiceProvider, rfd: int, wfd: int) -> None:
    """pynetdicom's DULServiceProvider.run_reactor, blocking instead of sleeping."""
    try:
        dul._idle_timer.start()
        while True:
            if not dul.assoc._dul_ready.is_set():
                dul.assoc._dul_ready.set()
            if dul._kill_thread:
                break
            if dul.artim_timer.expired:
                dul.event_queue.put("Evt18")
            try:
                if dul._process_recv_primitive():
                    pass
                elif dul._is_transport_event():
                    dul._idle_timer.restart()
            except Exception as exc:
                log.error("exception in the DUL reactor, aborting the association: %s", exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                if dul.socket is not None:
                    dul.socket.send(abort_pdu.encode())
                dul.assoc.is_aborted = True
                dul.assoc.is_established = False
                dul.assoc._kill = True
                dul._kill_thread = True
                return
            try:
                event = dul.event_queue.get(block=False)
            except queue.Empty:
                _wait_for_work(dul, rfd)
                continue
            dul.state_machine.do_action(event)
    finally:
        q = dul.to_provider_queue
        if isinstance(q, _WakingQueue):
            q.close_fd()
        try:
            os.close(rfd)
        except OSError:
            pass


def _wait_for_msg(assoc: Association) -> None:
    q = assoc.dimse.msg_queue
    with q.not_empty:
        if not q._qsize():  # type: ignore[attr-defined]
            q.not_empty.wait(ASSOC_IDLE_WAIT_S)


def _assoc_loop(assoc: Association) -> None:
    """pynetdicom's Association._run_reactor, waiting on the message queue instead of 1 ms."""
    assoc._is_paused = False
    while not assoc._kill:
        _wait_for_msg(assoc)
        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False
        context_id, msg = assoc.dimse.get_msg(block=False)
        if msg:
            assoc._serve_request(msg, context_id)  # type: ignore[arg-type]
        if assoc.is_established and assoc.acse.is_release_requested():
            assoc.acse.send_release(is_response=True)
            assoc.is_released = True
            assoc.is_established = False
            pynetdicom.evt.trigger(assoc, pynetdicom.evt.EVT_RELEASED, {})
            assoc.kill()
            return
        if assoc.acse.is_aborted():
            assoc.dul.receive_pdu(wait=False)
            assoc.is_aborted = True
            assoc.is_established = False
            pynetdicom.evt.trigger(assoc, pynetdicom.evt.EVT_ABORTED, {})
            assoc.kill()
            return
        if not assoc.dul.is_alive():
            assoc.kill()
            return
        if assoc.dul.idle_timer_expired():
            log.error("network timeout reached calling_ae=%s", _calling(assoc))
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()
            assoc.kill()
            return


def _calling(assoc: Association) -> str:
    prim = assoc.requestor.primitive
    return str(prim.calling_ae_title).strip() if prim is not None else ""
