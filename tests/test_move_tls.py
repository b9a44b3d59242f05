"""C-MOVE to a destination registered with tls = true: DICOM TLS to a DCMTK storescp."""

from __future__ import annotations

from pathlib import Path

import pydicom

from shared.errors import SUCCESS
from shared.registry import Node, upsert_node
from shared.synthetic import StudySpec, write_study
from tests.support.dcmtk import storescp
from tests.support.edge import edge_config, running_edge
from tests.support.net import free_port, port_open, wait_for
from tests.support.retrieve import assert_received_identical, load, move, study_identifier
from tests.support.tls import server_cert_files


def test_move_to_a_tls_destination(tmp_path: Path) -> None:
    key, cert, ca_file = server_cert_files(tmp_path)
    out = tmp_path / "out"
    cfg = edge_config(tmp_path, tls={"port": 0, "ca_file": str(ca_file)})
    with running_edge(cfg) as edge:
        files = write_study(StudySpec(instances_per_series=2), tmp_path / "in")
        load(edge, files)
        port = free_port()
        proc = storescp(port, out, "TLSSCP", "+tls", str(key), str(cert), "-ic")
        try:
            wait_for(lambda: port_open(port), what="storescp TLS")
            with edge.db.write() as conn:
                upsert_node(
                    conn, Node("TLSSCP", "127.0.0.1", port, tls=True, permissions=frozenset())
                )
            study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
            rsps = move(edge, study_identifier(study_uid), "TLSSCP")
        finally:
            proc.terminate()
            proc.wait(10)
    assert rsps[-1][0] == SUCCESS
    assert_received_identical(out, files)
