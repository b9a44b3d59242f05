"""Outbound associations to registered nodes (C-ECHO now; C-STORE for move and routing)."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

from edge.contexts import VERIFICATION
from shared.config import TlsConfig
from shared.registry import Node


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    status: int | None
    rtt_ms: float
    detail: str


def client_ssl_context(
    ca_file: str = "", cert_file: str = "", key_file: str = ""
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    ctx.check_hostname = False  # DICOM nodes are addressed by IP; the CA pins trust
    if cert_file and key_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def node_ssl_context(tls: TlsConfig, node: Node) -> ssl.SSLContext | None:
    """Our client context from `[edge.tls]` for a node with tls = true, else None (its
    certificate is presented when configured; a TLS node is reached even without one)."""
    if not node.tls:
        return None
    return client_ssl_context(tls.ca_file, tls.cert_file, tls.key_file)


def associate(
    ae: AE,
    node: Node,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout_s: float = 10.0,
    **assoc_kwargs: Any,
) -> Association:
    """Open an association to a node: the one way out (echo, C-MOVE/routing sends, commitment
    reports), so timeouts, TLS and TCP_NODELAY are decided once. `assoc_kwargs` go to
    `AE.associate` (contexts, max_pdu, ext_neg, evt_handlers)."""
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    assoc = ae.associate(
        node.host,
        node.port,
        ae_title=node.ae_title,
        tls_args=tls_args(node, ssl_context),
        **assoc_kwargs,
    )
    set_nodelay(assoc)
    return assoc


def tls_args(node: Node, ssl_context: ssl.SSLContext | None) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's `tls_args` for an outbound association to `node`, decided in this one place.

    TLS only when the node asks for it and we have a context. The server name is the node's
    host (SNI for a name; ssl sends none for an IP address): an empty string makes ssl refuse
    to connect, and hostname checking is off in `client_ssl_context` anyway.
    """
    if not node.tls or ssl_context is None:
        return None
    return (ssl_context, node.host)


def set_nodelay(assoc: Association) -> None:
    """TCP_NODELAY on an association's socket, like our accepted sockets: a DIMSE response is
    small and must not wait for Nagle's delayed ACK."""
    sock = assoc.dul.socket.socket if assoc.dul.socket else None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def echo(
    our_ae_title: str,
    node: Node,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout_s: float = 10.0,
) -> EchoResult:
    """C-ECHO a node; reports the status and the round-trip time of association + echo."""
    ae = AE(ae_title=our_ae_title)
    ae.add_requested_context(VERIFICATION)
    t0 = time.perf_counter()
    assoc = associate(ae, node, ssl_context=ssl_context, timeout_s=timeout_s)
    if not assoc.is_established:
        rtt = (time.perf_counter() - t0) * 1000
        why = "rejected" if assoc.is_rejected else "no association (refused or timed out)"
        return EchoResult(False, None, rtt, why)
    try:
        rsp = assoc.send_c_echo()
        rtt = (time.perf_counter() - t0) * 1000
        status = int(rsp.Status) if rsp and "Status" in rsp else None
    finally:
        assoc.release()
    if status is None:
        return EchoResult(False, None, rtt, "no response")
    return EchoResult(status == 0, status, rtt, "success" if status == 0 else "failure status")
