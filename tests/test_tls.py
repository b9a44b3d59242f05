"""DICOM TLS: a second listener beside the plain port, optional mutual TLS, either one off.

Certificates are made on the fly with trustme; the peer is pynetdicom with tls_args.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from edge.server import EdgeServer
from shared.errors import SUCCESS
from shared.synthetic import StudySpec, iter_study
from tests.support.edge import association, edge_config, running_edge
from tests.support.net import free_port, port_open


@dataclass
class Pki:
    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    client = ca.issue_cert("modality.example")
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    return Pki(
        ca, d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key"
    )


def _tls_config(tmp_path: Path, pki: Pki, *, mutual: bool, **edge: Any) -> dict[str, Any]:
    tls = {
        "port": free_port(),
        "cert_file": str(pki.cert_file),
        "key_file": str(pki.key_file),
        "ca_file": str(pki.ca_file) if mutual else "",
        "require_client_cert": mutual,
    }
    tls.update(edge.pop("tls", {}))
    return edge_config(tmp_path, tls=tls, **edge)


def _client_ctx(pki: Pki, *, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_file))
    if with_cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


@pytest.fixture
def mutual_edge(tmp_path: Path, pki: Pki) -> Iterator[EdgeServer]:
    with running_edge(_tls_config(tmp_path, pki, mutual=True)) as srv:
        yield srv


def _echo_and_store(port: int, tls_args: tuple[ssl.SSLContext, str] | None) -> None:
    ds = next(iter_study(StudySpec(instances_per_series=1)))
    with association(port, tls_args=tls_args) as assoc:
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == SUCCESS
        assert int(assoc.send_c_store(ds).Status) == SUCCESS


def test_plain_and_tls_listeners_side_by_side(tmp_path: Path, pki: Pki) -> None:
    with running_edge(_tls_config(tmp_path, pki, mutual=False)) as srv:
        plain, tls = srv.ports
        assert (plain, tls) == (srv.cfg.edge.port, srv.cfg.edge.tls.port)
        _echo_and_store(plain, None)
        _echo_and_store(tls, (_client_ctx(pki, with_cert=False), "127.0.0.1"))
        n = srv.db.reader().execute("SELECT count(*) FROM instances").fetchone()[0]
        assert n == 2


def test_mutual_tls_accepts_a_client_certificate(mutual_edge: EdgeServer, pki: Pki) -> None:
    _echo_and_store(mutual_edge.ports[1], (_client_ctx(pki, with_cert=True), "127.0.0.1"))


def test_mutual_tls_refuses_a_client_without_certificate(mutual_edge: EdgeServer, pki: Pki) -> None:
    with association(
        mutual_edge.ports[1], tls_args=(_client_ctx(pki, with_cert=False), "127.0.0.1")
    ) as assoc:
        assert not assoc.is_established
    assert mutual_edge.active_associations() == 0
    assert mutual_edge.db.reader().execute("SELECT count(*) FROM instances").fetchone()[0] == 0


def test_mutual_tls_refuses_a_certificate_from_another_ca(
    mutual_edge: EdgeServer, pki: Pki, tmp_path: Path
) -> None:
    rogue = trustme.CA().issue_cert("modality.example")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_file))
    rogue.configure_cert(ctx)
    with association(mutual_edge.ports[1], tls_args=(ctx, "127.0.0.1")) as assoc:
        assert not assoc.is_established


def test_client_refuses_a_server_it_does_not_trust(mutual_edge: EdgeServer, pki: Pki) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None)
    ctx.load_verify_locations(cadata=trustme.CA().cert_pem.bytes().decode())
    with association(mutual_edge.ports[1], tls_args=(ctx, "127.0.0.1")) as assoc:
        assert not assoc.is_established


def test_plain_listener_can_be_disabled(tmp_path: Path, pki: Pki) -> None:
    plain = free_port()
    data = _tls_config(tmp_path, pki, mutual=False)
    data["edge"]["port"] = 0
    with running_edge(data) as srv:
        assert srv.ports == [srv.cfg.edge.tls.port]
        assert not port_open(plain)
        _echo_and_store(srv.ports[0], (_client_ctx(pki, with_cert=False), "127.0.0.1"))


@pytest.mark.parametrize("how", ["port 0", "no certificate"])
def test_tls_listener_can_be_disabled(tmp_path: Path, pki: Pki, how: str) -> None:
    tls_port = free_port()
    tls = {"port": 0} if how == "port 0" else {"port": tls_port, "cert_file": "", "key_file": ""}
    data = _tls_config(tmp_path, pki, mutual=False, tls=tls)
    with running_edge(data) as srv:
        assert srv.ports == [srv.cfg.edge.port]
        assert not port_open(tls_port)
        _echo_and_store(srv.ports[0], None)


def test_a_silent_connection_does_not_stall_the_tls_listener(
    mutual_edge: EdgeServer, pki: Pki
) -> None:
    """The TLS handshake must not run in the accept loop: a peer that connects and says
    nothing (a port scanner, a half-open modality) would block every other TLS client."""
    import socket

    silent = socket.create_connection(("127.0.0.1", mutual_edge.ports[1]))
    try:
        _echo_and_store(mutual_edge.ports[1], (_client_ctx(pki, with_cert=True), "127.0.0.1"))
    finally:
        silent.close()


def test_client_certificates_are_checked_against_ca_file_only(mutual_edge: EdgeServer) -> None:
    """Not the system's public CAs: mutual TLS trusts the configured CA and nothing else."""
    ctx = mutual_edge._server_ssl_context()
    assert len(ctx.get_ca_certs()) == 1
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_cli_echo_of_a_tls_node_uses_the_edge_identity(
    mutual_edge: EdgeServer,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`nodes echo` to a node marked --tls presents edge.tls's certificate, trusts ca_file."""
    import edge.cli
    from tests.support.edge import write_toml

    monkeypatch.setattr(edge.cli, "setup_logging", lambda *_a, **_k: None)
    tls = {
        "port": 0,
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
        "ca_file": str(pki.ca_file),
    }
    data = edge_config(tmp_path / "other", ae_title="ECHOSCU", tls=tls)
    config = write_toml(tmp_path / "other.toml", data)
    port = str(mutual_edge.ports[1])
    assert (
        edge.cli.main(
            ["--config", str(config), "nodes", "add", "HPACS", "127.0.0.1", port, "--tls"]
        )
        == 0
    )
    assert edge.cli.main(["--config", str(config), "nodes", "echo", "HPACS"]) == 0
    assert "success status=0x0000" in capsys.readouterr().out


def test_dcmtk_storescu_over_mutual_tls(mutual_edge: EdgeServer, pki: Pki, tmp_path: Path) -> None:
    """A real modality-style peer: DCMTK with its own certificate, trusting our CA."""
    from shared.synthetic import write_study
    from tests.support.dcmtk import run

    files = write_study(StudySpec(instances_per_series=2), tmp_path / "in")
    port = mutual_edge.ports[1]
    tls = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca_file)]
    r = run("echoscu", *tls, "-aet", "ECHOSCU", "-aec", "HPACS", "127.0.0.1", port)
    assert r.returncode == 0, r.stderr
    r = run("storescu", *tls, "-aet", "STORESCU", "-aec", "HPACS", "127.0.0.1", port, *files)
    assert r.returncode == 0, r.stderr
    n = mutual_edge.db.reader().execute("SELECT count(*) FROM instances").fetchone()[0]
    assert n == 2
    # anonymous TLS (no client certificate) is refused by mutual TLS
    r = run("echoscu", "+tla", "+cf", str(pki.ca_file), "-aec", "HPACS", "127.0.0.1", port)
    assert r.returncode != 0
