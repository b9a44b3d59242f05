"""The TLS listener's SSL context (DICOM TLS, PS3.15 B.1).

Client certificates are verified against `edge.tls.ca_file` only: the default server context
also loads the system CAs, so any certificate from any public CA passed mutual TLS. The
handshake itself runs in each connection's own thread with the ARTIM deadline
(edge/dimse/acceptor.py), never in the accept loop, where one silent peer stalled every other
TLS client; a failed handshake is one WARNING line with the peer and a rejected event.
"""

from __future__ import annotations

import ssl

from shared.config import TlsConfig


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """TLS 1.2+, our certificate, and mutual TLS against ca_file when configured."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file:
        ctx.load_verify_locations(tls.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx
