"""Certificates for TLS peers in tests, made on the fly with trustme (no files in the repo)."""

from __future__ import annotations

from pathlib import Path

import trustme


def server_cert_files(folder: Path, *hosts: str) -> tuple[Path, Path, Path]:
    """A fresh CA and a server certificate for `hosts` (default 127.0.0.1), written as PEM
    files into `folder`.

    Returns (key, cert, ca_file): what a DCMTK `+tls key cert` or an HTTPS server presents,
    and the CA file its client trusts.
    """
    ca = trustme.CA()
    server = ca.issue_cert(*(hosts or ("127.0.0.1",)))
    key, cert, ca_file = folder / "scp.key", folder / "scp.crt", folder / "ca.crt"
    server.private_key_pem.write_to_path(str(key))
    server.cert_chain_pems[0].write_to_path(str(cert))
    ca.cert_pem.write_to_path(str(ca_file))
    return key, cert, ca_file
