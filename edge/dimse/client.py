"""Outbound associations on our engine: C-MOVE sub-operations, routing, commitment call-backs.

`connect` opens the TCP (and TLS) connection, negotiates with pynetdicom's PDU classes and
returns an engine `Association` owned by the calling thread; `store` sends one C-STORE and
waits for its response on the same thread (no DUL thread, no queue).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from edge.dimse import command as cmd
from edge.dimse import pdu
from edge.dimse.engine import Association, Message
from edge.dimse.link import Link, LinkClosed, LinkTimeout, TooLarge
from edge.dimse.negotiation import (
    MAX_ASSOCIATE_RQ_BYTES,
    Roles,
    decode_accept,
    decode_reject,
    request,
)

SEND_BUFFER_BYTES = 2 * 1024 * 1024


class AssociationFailed(Exception):
    """No association: refused connection, timeout, A-ASSOCIATE-RJ (`rejection` set) or abort."""

    def __init__(self, reason: str, rejection: tuple[int, int, int] | None = None) -> None:
        super().__init__(reason)
        self.rejection = rejection


def connect(
    our_ae: str,
    host: str,
    port: int,
    called_ae: str,
    wanted: list[tuple[str, list[str]]],
    *,
    roles: Roles | None = None,
    max_pdu: int = 262144,
    timeout_s: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> Association:
    """An established association to `called_ae` at host:port proposing `wanted` contexts."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise AssociationFailed(f"cannot connect to {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Room for a whole object in the kernel: the send returns at once and the next object
        # is read and verified while the peer is still receiving this one.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=host)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise AssociationFailed(f"TLS handshake with {host}:{port} failed: {exc}") from exc
    link = Link(sock, f"{host}:{port}", body_timeout_s=timeout_s)
    try:
        rq, proposed = request(our_ae, called_ae, wanted, roles, max_pdu)
        link.send(rq, timeout_s)
        kind, body = link.read_pdu(MAX_ASSOCIATE_RQ_BYTES, timeout_s)
        data = link.header + bytes(body)
        if kind == pdu.A_ASSOCIATE_RJ:
            rejection = decode_reject(data)
            raise AssociationFailed(f"association rejected {rejection}", rejection)
        if kind != pdu.A_ASSOCIATE_AC:
            raise AssociationFailed(f"no association: PDU type 0x{kind:02X} instead of AC")
        contexts, peer_max = decode_accept(data, proposed)
    except (LinkClosed, LinkTimeout, TooLarge, pdu.ProtocolError) as exc:
        link.close()
        raise AssociationFailed(f"no association with {called_ae} at {host}:{port}: {exc}") from exc
    except AssociationFailed:
        link.close()
        raise
    return Association(
        link,
        contexts,
        peer_max_pdu=peer_max,
        our_max_pdu=max_pdu,
        idle_timeout_s=timeout_s,
        dimse_timeout_s=timeout_s,
        calling_ae=our_ae,
        called_ae=called_ae,
    )


def request_and_wait(
    assoc: Association, cx_id: int, build: Any, dataset: bytes | None = None
) -> Message:
    """Send a request built by `build(message_id)` and wait for its response."""
    message_id = assoc.next_message_id()
    assoc.send(cx_id, build(message_id), dataset)
    return assoc.wait_response(message_id)


def status_of(response: Message) -> int:
    status = response.command.status
    if status is None:
        raise pdu.ProtocolError("response without a Status")
    return status


__all__ = ["AssociationFailed", "cmd", "connect", "request_and_wait", "status_of"]
