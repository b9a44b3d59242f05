"""A raw DICOM peer for wire-level tests: pynetdicom's PDU classes build what it sends, so
the edge's decoders are not tested against themselves; everything else is bytes on a socket."""

from __future__ import annotations

import socket
import struct
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def associate_rq(
    calling: str = "ECHOSCU", called: str = "HPACS", contexts: list[tuple[str, str]] | None = None
) -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title = calling
    prim.called_ae_title = called
    cxs = []
    for i, (abstract, ts) in enumerate(contexts or [(VERIFICATION, EXPLICIT)]):
        cx = build_context(abstract, [ts])
        cx.context_id = 2 * i + 1
        cxs.append(cx)
    prim.presentation_context_definition_list = cxs
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    prim.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return bytes(pdu.encode())


def recv_pdu(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes] | None:
    """(type, body) of the next PDU, or None when the connection closed first."""
    sock.settimeout(timeout)
    head = _exact(sock, 6)
    if head is None:
        return None
    kind, _, length = struct.unpack(">BBI", head)
    body = _exact(sock, length)
    return (kind, body) if body is not None else None


def _exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except (ConnectionResetError, TimeoutError):
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def associated(port: int, **kw: Any) -> socket.socket:
    """A socket with an accepted association (A-ASSOCIATE-AC read)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(associate_rq(**kw))
    got = recv_pdu(sock)
    assert got is not None and got[0] == 0x02, got
    return sock


def p_data(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">BBIIBB", 4, 0, len(data) + 6, len(data) + 2, context_id, control) + data
