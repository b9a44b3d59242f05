"""The TLS listener's SSL context (DICOM TLS, PS3.15 B.1).

Two departures from `ssl.create_default_context(Purpose.CLIENT_AUTH)`, each a bug it had here:
- client certificates are verified against `edge.tls.ca_file` only. The default context also
  loads the system CAs, so any certificate from any public CA passed mutual TLS.
- the handshake runs on the first read, in the association's own thread. pynetdicom wraps
  accepted sockets in its accept loop, where a blocking handshake let one peer that connects
  and says nothing (a port scan, a half-open modality) stall every other TLS client.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from shared.config import TlsConfig


class _LazyHandshakeContext(ssl.SSLContext):
    def wrap_socket(  # type: ignore[override]
        self, sock: socket.socket, *args: Any, **kwargs: Any
    ) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """TLS 1.2+, our certificate, and mutual TLS against ca_file when configured."""
    ctx = _LazyHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file:
        ctx.load_verify_locations(tls.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx
