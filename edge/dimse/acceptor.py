"""Listeners and the unauthenticated phase of every inbound connection.

Each accepted connection gets its own thread, which owns the socket to the end: TLS handshake,
A-ASSOCIATE-RQ, admission, then the association's data phase (edge/dimse/engine.py). Before an
association exists, a connection is *unauthenticated*:
- it must deliver a whole A-ASSOCIATE-RQ within `artim_timeout_s` (ARTIM, PS3.8 9.1.5), or it
  is closed; a PDU declaring more than MAX_ASSOCIATE_RQ_BYTES is aborted before it is read;
- it never holds an association slot (slots are taken at admission, edge/slots.py);
- at most `max_unauthenticated` exist per process; a new connection beyond that closes the
  oldest waiting one (a modality sends its request within milliseconds of connecting, so the
  oldest is the one that has said least), and every such refusal is logged with its peer.
So idle or half-open sockets can neither lock registered nodes out nor grow memory.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.dimse import pdu
from edge.dimse.engine import Association
from edge.dimse.link import Link, LinkClosed, LinkTimeout
from edge.dimse.negotiation import MAX_ASSOCIATE_RQ_BYTES, Request, accept, decode_request

log = logging.getLogger("hpacs.edge.dimse")

TLS_RECORD_HANDSHAKE = 0x16


@dataclass(frozen=True)
class Settings:
    our_max_pdu: int
    artim_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    dimse_timeout_s: float = 60.0
    max_unauthenticated: int = 16
    reuse_port: bool = False


@dataclass
class Admission:
    """What `admit` decided: `reject` is an A-ASSOCIATE-RJ triple, or None to accept."""

    reject: tuple[int, int, int] | None = None
    reason: str = ""
    state: Any = None  # handed back to `serve` and `closed` (slot, node, counters)


Admit = Callable[[Request, str], Admission]
Serve = Callable[[Association | None, Admission], None]
Refused = Callable[[str, str, str], None]  # peer, reason, calling AE ("" before the request)
Negotiate = Callable[[Request], tuple[list[Any], bool]]  # supported contexts, unrestricted


class Acceptor:
    """Listens on the DIMSE port(s) and runs each connection in its own thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        admit: Admit,
        serve: Serve,
        refused: Refused,
        supported: Negotiate,
    ) -> None:
        self.settings = settings
        self._admit = admit
        self._serve = serve
        self._refused = refused
        self._supported = supported
        self._listeners: list[tuple[socket.socket, ssl.SSLContext | None]] = []
        self._threads: set[threading.Thread] = set()
        self._waiting: dict[int, tuple[float, Link]] = {}  # unauthenticated, by id(link)
        self._links: set[Link] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # ---- listening -----------------------------------------------------------------------
    def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.settings.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(128)
        self._listeners.append((sock, ssl_context))
        t = threading.Thread(
            target=self._accept_loop, args=(sock, ssl_context), name="dimse-accept", daemon=True
        )
        t.start()
        with self._lock:
            self._threads.add(t)
        return int(sock.getsockname()[1])

    @property
    def ports(self) -> list[int]:
        return [int(s.getsockname()[1]) for s, _ in self._listeners]

    def _accept_loop(self, sock: socket.socket, ctx: ssl.SSLContext | None) -> None:
        while not self._stopping.is_set():
            try:
                conn, addr = sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)  # EMFILE and the like: do not spin
                continue
            t = threading.Thread(
                target=self._connection, args=(conn, str(addr[0]), ctx), name="dimse", daemon=True
            )
            with self._lock:
                self._threads.add(t)
            t.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, end every connection and wait (bounded) for their threads."""
        self._stopping.set()
        for sock, _ in self._listeners:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            except OSError:
                pass
            sock.close()
        self._listeners.clear()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.shutdown()
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    # ---- one connection ------------------------------------------------------------------
    def _connection(self, sock: socket.socket, peer: str, ctx: ssl.SSLContext | None) -> None:
        link = Link(sock, peer, body_timeout_s=self.settings.artim_timeout_s)
        with self._lock:
            self._links.add(link)
        try:
            _tune(sock)
            request = self._unauthenticated(link, ctx)
            if request is not None:
                self._associate(link, request)
        except Exception:
            log.exception("connection failed peer=%s", peer)
        finally:
            link.close()
            with self._lock:
                self._links.discard(link)
                self._waiting.pop(id(link), None)
                self._threads.discard(threading.current_thread())

    def _enter_waiting(self, link: Link) -> None:
        with self._lock:
            evict = None
            if len(self._waiting) >= self.settings.max_unauthenticated:
                evict = min(self._waiting.items(), key=lambda kv: kv[1][0])
                del self._waiting[evict[0]]
            self._waiting[id(link)] = (time.monotonic(), link)
        if evict is not None:
            old = evict[1][1]
            self._refused(
                old.peer,
                f"too many unauthenticated connections (edge.max_unauthenticated="
                f"{self.settings.max_unauthenticated}): closed the oldest",
                "",
            )
            old.shutdown()

    def _leave_waiting(self, link: Link) -> bool:
        """False when the connection was evicted meanwhile."""
        with self._lock:
            return self._waiting.pop(id(link), None) is not None

    def _unauthenticated(self, link: Link, ctx: ssl.SSLContext | None) -> Request | None:
        s = self.settings
        self._enter_waiting(link)
        deadline = time.monotonic() + s.artim_timeout_s
        if ctx is not None and not self._handshake(link, ctx, s.artim_timeout_s):
            return None
        try:
            kind, length = link.read_header(max(0.0, deadline - time.monotonic()))
        except LinkTimeout:
            if self._leave_waiting(link):
                self._refused(link.peer, "no A-ASSOCIATE-RQ within edge.artim_timeout_s", "")
            return None
        except LinkClosed:
            return None  # closed before saying anything (a port probe, an evicted socket)
        if kind != pdu.A_ASSOCIATE_RQ:
            self._leave_waiting(link)
            if ctx is None and kind == TLS_RECORD_HANDSHAKE:
                reason = "protocol mismatch: a TLS client on the plain DICOM port"
            else:
                reason = f"protocol mismatch: PDU type 0x{kind:02X} instead of A-ASSOCIATE-RQ"
            self._refused(link.peer, reason, "")
            self._abort(link, pdu.REASON_UNEXPECTED_PDU)
            return None
        if length > MAX_ASSOCIATE_RQ_BYTES:
            self._leave_waiting(link)
            self._refused(
                link.peer,
                f"A-ASSOCIATE-RQ declares {length} bytes (limit {MAX_ASSOCIATE_RQ_BYTES})",
                "",
            )
            self._abort(link, pdu.REASON_INVALID_PARAMETER)
            return None
        try:
            link.body_timeout_s = max(0.01, deadline - time.monotonic())
            body = link.read_body(length)
            data = link.header + bytes(body)
        except LinkTimeout:
            if self._leave_waiting(link):
                self._refused(link.peer, "A-ASSOCIATE-RQ incomplete at edge.artim_timeout_s", "")
            return None
        except LinkClosed:
            return None
        if not self._leave_waiting(link):
            return None
        try:
            return decode_request(data)
        except pdu.ProtocolError as exc:
            self._refused(link.peer, str(exc), "")
            self._abort(link, pdu.REASON_INVALID_PARAMETER)
            return None

    def _handshake(self, link: Link, ctx: ssl.SSLContext, timeout_s: float) -> bool:
        try:
            tls = ctx.wrap_socket(link.sock, server_side=True, do_handshake_on_connect=False)
            link.sock = tls
            tls.settimeout(timeout_s)
            tls.do_handshake()
            return True
        except (ssl.SSLError, OSError) as exc:
            if self._leave_waiting(link):
                reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
                hint = ""
                if reason in ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST"):
                    hint = " (a plain DICOM client on the TLS port?)"
                self._refused(link.peer, f"TLS handshake failed: {reason}{hint}", "")
            return False

    def _abort(self, link: Link, reason: int) -> None:
        try:
            link.send(pdu.abort(pdu.ABORT_PROVIDER, reason), 1.0)
        except (LinkClosed, LinkTimeout):
            pass

    def _associate(self, link: Link, request: Request) -> None:
        s = self.settings
        admission = self._admit(request, link.peer)
        if admission.reject is not None:
            try:
                link.send(pdu.reject(*admission.reject), 2.0)
            except (LinkClosed, LinkTimeout):
                pass
            return
        assoc: Association | None = None
        ready = False
        try:
            supported, unrestricted = self._supported(request)
            ac, contexts = accept(request, supported, unrestricted, s.our_max_pdu)
            link.body_timeout_s = s.dimse_timeout_s
            assoc = Association(
                link,
                contexts,
                peer_max_pdu=request.max_pdu,
                our_max_pdu=s.our_max_pdu,
                idle_timeout_s=s.idle_timeout_s,
                dimse_timeout_s=s.dimse_timeout_s,
                calling_ae=request.calling_ae,
                called_ae=request.called_ae,
            )
            link.send(ac, s.dimse_timeout_s)
            ready = not self._stopping.is_set()
        except (LinkClosed, LinkTimeout):
            pass
        finally:
            if assoc is not None and not ready:
                assoc.abort()
            # `serve` runs the data phase, or (None) only ends what `admit` started (the slot)
            self._serve(assoc if ready else None, admission)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()


def _tune(sock: socket.socket) -> None:
    """No Nagle (a DIMSE response must not wait for a delayed ACK); keepalive so a peer that
    lost power is noticed by the kernel even between our own deadlines."""
    for level, opt in (
        (socket.IPPROTO_TCP, socket.TCP_NODELAY),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    ):
        try:
            sock.setsockopt(level, opt, 1)
        except OSError:
            pass
