"""Routing to DCMTK storescp destinations, one of them down for a while, then back."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from edge.forwarder import dimse_sender
from edge.routequeue import queue_depth
from edge.scu import client_ssl_context
from shared.rows import Origin
from shared.synthetic import StudySpec, write_study
from tests.support.dcmtk import storescp
from tests.support.net import free_port, port_open, wait_for
from tests.support.routing import edge_parts, jobs, routing_config, running_forwarder
from tests.support.tls import server_cert_files

IMPLICIT_VR = "1.2.840.10008.1.2"


@pytest.fixture
def peers() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        p.terminate()
        p.wait(10)


def received(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]


def test_destination_down_then_back_nothing_lost_nothing_sent_twice(
    tmp_path: Path, peers: list[subprocess.Popen[str]]
) -> None:
    up_port, down_port = free_port(), free_port()
    nodes = [
        {"ae_title": "UPSCP", "host": "127.0.0.1", "port": up_port},
        {"ae_title": "LATESCP", "host": "127.0.0.1", "port": down_port},
    ]
    route = {
        "name": "ct-out",
        "modality": "CT",
        "destinations": ["UPSCP", "LATESCP"],
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "max_attempts": 1000,
    }
    cfg = routing_config(
        tmp_path, [route, {"name": "mr", "modality": "MR", "destinations": ["UPSCP"]}], nodes
    )
    # +uf: a unique file per receipt, so an instance sent twice would show up twice
    peers.append(storescp(up_port, tmp_path / "up", "UPSCP", "+uf"))
    wait_for(lambda: port_open(up_port), 10, "storescp up")
    with edge_parts(cfg) as parts:
        files = write_study(StudySpec(instances_per_series=4), tmp_path / "in")
        for f in files:
            parts.ingestor.ingest_path(f, Origin("dimse", calling_ae="CT01"))
        sender = dimse_sender(cfg.edge.ae_title, parts.db, parts.cache, timeout_s=5)
        with running_forwarder(parts, sender, poll_interval_s=0.02):
            late = lambda: [j for j in jobs(parts.db) if j["destination"] == "LATESCP"]  # noqa: E731
            wait_for(lambda: min(j["attempts"] for j in late()) >= 2, 20, "failed attempts")
            assert {j["state"] for j in late()} <= {"pending", "sending"}
            assert "association" in late()[0]["last_error"]
            # back, accepting Implicit VR Little Endian only: the sender converts
            peers.append(storescp(down_port, tmp_path / "late", "LATESCP", "+uf", "+xi"))
            wait_for(lambda: port_open(down_port), 10, "storescp back")
            wait_for(lambda: queue_depth(parts.db.reader())["sent"] == 8, 30, "all forwarded")
        assert queue_depth(parts.db.reader())["sent"] == 8
    sent_uids = sorted(str(pydicom.dcmread(f).SOPInstanceUID) for f in files)
    for folder, syntax in ((tmp_path / "up", None), (tmp_path / "late", IMPLICIT_VR)):
        got = received(folder)
        assert sorted(str(ds.SOPInstanceUID) for ds in got) == sent_uids  # each exactly once
        if syntax:
            assert {str(ds.file_meta.TransferSyntaxUID) for ds in got} == {syntax}


def test_forward_to_a_tls_destination(tmp_path: Path, peers: list[subprocess.Popen[str]]) -> None:
    key, cert, ca_file = server_cert_files(tmp_path)
    port = free_port()
    nodes = [{"ae_title": "TLSSCP", "host": "127.0.0.1", "port": port, "tls": True}]
    route = {"name": "tls", "destinations": ["TLSSCP"], "max_attempts": 1}
    cfg = routing_config(tmp_path, [route], nodes)
    # +tls: DICOM TLS with this key and certificate; -ic: no client certificate required
    peers.append(storescp(port, tmp_path / "tls-out", "TLSSCP", "+tls", str(key), str(cert), "-ic"))
    wait_for(lambda: port_open(port), 10, "storescp TLS up")
    with edge_parts(cfg) as parts:
        files = write_study(StudySpec(instances_per_series=2), tmp_path / "in")
        for f in files:
            parts.ingestor.ingest_path(f, Origin("import"))
        sender = dimse_sender(
            cfg.edge.ae_title,
            parts.db,
            parts.cache,
            ssl_context=client_ssl_context(str(ca_file)),
            timeout_s=5,
        )
        with running_forwarder(parts, sender, poll_interval_s=0.02):
            done = lambda: queue_depth(parts.db.reader())  # noqa: E731
            wait_for(lambda: done()["sent"] + done()["dead"] == 2, 30, "sent or dead")
        assert done()["sent"] == 2, [j["last_error"] for j in jobs(parts.db)]
    assert len(received(tmp_path / "tls-out")) == 2
