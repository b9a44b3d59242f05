"""One socket, owned by one thread, with a deadline on every read.

A PDU's header is read within the caller's timeout (ARTIM before association, the idle
timeout after); its body must follow within `body_timeout_s` of the header, so a peer that
declares a length and goes silent is dropped, never waited for. A declared length above the
caller's bound raises `TooLarge` before a byte of the body is read or buffered.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from typing import Any

from edge.dimse.pdu import HEADER_LEN, parse_header

_IOV_MAX = 512  # buffers per sendmsg (Linux allows 1024)


class LinkClosed(Exception):
    """The peer closed or reset the connection."""


class LinkTimeout(Exception):
    """A read's deadline passed."""


class TooLarge(Exception):
    """A PDU declares more bytes than allowed here (nothing of it was buffered)."""

    def __init__(self, pdu_type: int, length: int, limit: int) -> None:
        super().__init__(f"PDU type 0x{pdu_type:02X} declares {length} bytes (limit {limit})")
        self.pdu_type = pdu_type
        self.length = length
        self.limit = limit


class Link:
    def __init__(self, sock: socket.socket, peer: str, body_timeout_s: float = 60.0) -> None:
        self.sock = sock
        self.peer = peer
        self.body_timeout_s = body_timeout_s
        self._header = bytearray(HEADER_LEN)
        self._buf = bytearray(16384)
        self.closed = False

    @property
    def tls(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket)

    def readable(self, timeout: float | None = 0.0) -> bool:
        """Whether bytes (or EOF) are waiting; blocks at most `timeout` (None: forever)."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            r, _, _ = select.select([self.sock], [], [], timeout)
        except (OSError, ValueError):
            return True  # closed under us: the read reports it
        return bool(r)

    def _read_into(self, view: memoryview, deadline: float) -> None:
        got, n = 0, len(view)
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LinkTimeout(f"{n - got} of {n} bytes missing at the deadline")
            self.sock.settimeout(left)
            try:
                k = self.sock.recv_into(view[got:], n - got)
            except TimeoutError as exc:
                raise LinkTimeout(f"{n - got} of {n} bytes missing at the deadline") from exc
            except (ConnectionError, ssl.SSLError, OSError) as exc:
                raise LinkClosed(str(exc) or type(exc).__name__) from exc
            if k == 0:
                raise LinkClosed("connection closed by the peer")
            got += k

    def read_header(self, timeout_s: float | None) -> tuple[int, int]:
        """The next PDU's (type, length); LinkTimeout when none starts within `timeout_s`."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 1e9)
        self._read_into(memoryview(self._header), deadline)
        return parse_header(self._header)

    @property
    def header(self) -> bytes:
        return bytes(self._header)

    def read_body(self, length: int) -> memoryview:
        """`length` bytes into a buffer reused by the next read (copy what must outlive it)."""
        if len(self._buf) < length:
            self._buf = bytearray(max(length, 2 * len(self._buf)))
        view = memoryview(self._buf)[:length]
        self._read_into(view, time.monotonic() + self.body_timeout_s)
        return view

    def read_pdu(self, limit: int, timeout_s: float | None) -> tuple[int, memoryview]:
        pdu_type, length = self.read_header(timeout_s)
        if limit and length > limit:
            raise TooLarge(pdu_type, length, limit)
        return pdu_type, self.read_body(length)

    def send(self, data: bytes | bytearray | memoryview, timeout_s: float = 60.0) -> None:
        self.sock.settimeout(timeout_s)
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise LinkTimeout("peer did not take our data in time") from exc
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            raise LinkClosed(str(exc) or type(exc).__name__) from exc

    def send_parts(self, parts: list[Any], timeout_s: float = 60.0) -> None:
        """Send buffers in order: sendmsg (no join copy) on a plain socket, else one sendall."""
        if isinstance(self.sock, ssl.SSLSocket) or len(parts) < 4:
            self.send(b"".join(parts), timeout_s)
            return
        self.sock.settimeout(timeout_s)
        views = [memoryview(p).cast("B") for p in parts]
        i = 0
        try:
            while i < len(views):
                sent = self.sock.sendmsg(views[i : i + _IOV_MAX])
                while i < len(views) and sent >= len(views[i]):
                    sent -= len(views[i])
                    i += 1
                if sent:
                    views[i] = views[i][sent:]
        except TimeoutError as exc:
            raise LinkTimeout("peer did not take our data in time") from exc
        except (ConnectionError, OSError) as exc:
            raise LinkClosed(str(exc) or type(exc).__name__) from exc

    def shutdown(self) -> None:
        """Wake a thread blocked reading this socket (server stop, eviction)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
