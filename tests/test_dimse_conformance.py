"""Conformance defects found on the wire by real peers, each reproduced (issue 11):
Big Endian conversion for C-MOVE/C-GET/routing, C-MOVE without permission, an unreachable or
refusing destination, the counts of `move done`/`get done`, Storage Commitment reports on the
requester's association without role selection and the persistent retry queue, TLS failures."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from edge import commitqueue
from edge.locate import INSTANCE_COLUMNS, InstanceRef
from edge.sender import CacheSource, send_instances
from edge.server import EdgeServer
from shared.errors import OUT_OF_RESOURCES_SUBOPS, REFUSED_NOT_AUTHORIZED, SUCCESS
from shared.registry import get_node
from tests.support.console import call_json, running_http
from tests.support.edge import edge_config, running_edge
from tests.support.net import free_port, wait_for
from tests.support.retrieve import (
    Recorder,
    get,
    load,
    load_study,
    move,
    pynetdicom_destination,
    register,
    study_identifier,
)
from tests.test_commitment import _action, _request, _stored, modality
from tests.test_tls import Pki, _tls_config, pki  # noqa: F401 (pki: a fixture)

BIG_ENDIAN = get_testdata_file("MR_small_bigendian.dcm")
LITTLE = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def _pixels(data: bytes, ts: str, meta_from: Path) -> np.ndarray:
    """The pixel array of a received dataset (bytes in transfer syntax `ts`)."""
    from edge.dimse.dataset import decode

    ds = decode(data, ts)
    ds.file_meta = pydicom.dcmread(meta_from).file_meta
    ds.file_meta.TransferSyntaxUID = ts
    return ds.pixel_array


def _big_endian_loaded(edge: EdgeServer) -> tuple[pydicom.Dataset, np.ndarray]:
    load(edge, [Path(BIG_ENDIAN)])
    ds = pydicom.dcmread(BIG_ENDIAN)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
    return ds, ds.pixel_array.copy()


# ---- Explicit VR Big Endian -------------------------------------------------------------------
def test_big_endian_is_converted_for_c_move(edge: EdgeServer) -> None:
    ds, pixels = _big_endian_loaded(edge)
    with pynetdicom_destination({str(ds.SOPClassUID): LITTLE}) as (port, rec):
        register(edge, "PYSCP", port)
        rsps = move(edge, study_identifier(str(ds.StudyInstanceUID)), "PYSCP")
    assert rsps[-1][0] == SUCCESS
    ts, data = rec.received[str(ds.SOPInstanceUID)]
    assert ts in LITTLE
    assert np.array_equal(_pixels(data, ts, Path(BIG_ENDIAN)), pixels)


@pytest.mark.parametrize("ts", LITTLE)
def test_big_endian_is_converted_for_c_get(edge: EdgeServer, ts: str) -> None:
    ds, pixels = _big_endian_loaded(edge)
    rsps, rec = get(edge, study_identifier(str(ds.StudyInstanceUID)), [str(ds.SOPClassUID)], [ts])
    assert rsps[-1][0] == SUCCESS
    got_ts, data = rec.received[str(ds.SOPInstanceUID)]
    assert got_ts == ts
    assert np.array_equal(_pixels(data, ts, Path(BIG_ENDIAN)), pixels)


def test_big_endian_is_converted_for_routing(edge: EdgeServer) -> None:
    ds, pixels = _big_endian_loaded(edge)
    row = edge.db.reader().execute(f"SELECT {INSTANCE_COLUMNS} FROM instances i").fetchone()
    with pynetdicom_destination({str(ds.SOPClassUID): LITTLE}) as (port, rec):
        register(edge, "PYSCP", port)
        node = get_node(edge.db.reader(), "PYSCP")
        assert node is not None
        report = send_instances(
            "HPACS", node, [InstanceRef.from_row(row)], CacheSource(edge.locator)
        )
    assert (report.completed, report.failed, report.converted) == (1, 0, 1)
    ts, data = rec.received[str(ds.SOPInstanceUID)]
    assert np.array_equal(_pixels(data, ts, Path(BIG_ENDIAN)), pixels)


# ---- C-MOVE refusals --------------------------------------------------------------------------
def _hpacs_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("hpacs") and r.levelno >= logging.WARNING
    ]


def test_move_without_permission_is_0124_with_one_warning(
    edge: EdgeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study_uid, _ = load_study(edge, tmp_path, n=1)
    register(edge, "NOMOVE", 104, ["echo", "find"])
    with pynetdicom_destination() as (port, rec):
        register(edge, "PYSCP", port)
        with caplog.at_level(logging.INFO):
            rsps = move(edge, study_identifier(study_uid), "PYSCP", calling_ae="NOMOVE")
    assert [s for s, _, _ in rsps] == [REFUSED_NOT_AUTHORIZED]
    assert rec.associations == 0
    warnings = _hpacs_warnings(caplog)
    assert (
        len(warnings) == 1 and "calling_ae=NOMOVE" in warnings[0] and "service=move" in warnings[0]
    )
    assert not any(r.exc_info for r in caplog.records)


def _refusing_peer() -> tuple[AE, int]:
    """A pynetdicom SCP that accepts nothing but Verification: every move context rejected."""
    ae = AE(ae_title="REFUSER")
    ae.require_called_aet = True  # our call names REFUSER2: A-ASSOCIATE-RJ
    ae.add_supported_context(Verification)
    port = free_port()
    ae.start_server(("127.0.0.1", port), block=False)
    return ae, port


@pytest.mark.parametrize("how", ["unreachable", "refusing"])
def test_destination_that_cannot_be_reached_is_a702_not_a801(
    edge: EdgeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    study_uid, _ = load_study(edge, tmp_path, n=2)
    ae = None
    if how == "unreachable":
        port = free_port()  # nothing listens there
    else:
        ae, port = _refusing_peer()
    try:
        register(edge, "REFUSER2", port)
        with caplog.at_level(logging.INFO):
            rsps = move(edge, study_identifier(study_uid), "REFUSER2")
    finally:
        if ae is not None:
            ae.shutdown()
    status, _ident, final = rsps[-1]
    assert status == OUT_OF_RESOURCES_SUBOPS
    assert final.NumberOfFailedSuboperations == 2 and final.NumberOfCompletedSuboperations == 0
    warnings = _hpacs_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "destination=REFUSER2" in warnings[0] and f"127.0.0.1:{port}" in warnings[0]
    assert ("cannot connect" if how == "unreachable" else "rejected") in warnings[0]


def test_move_done_counts_delivered_failed_and_warning(
    edge: EdgeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study_uid, files = load_study(edge, tmp_path, n=3)
    evicted = str(pydicom.dcmread(files[1]).SOPInstanceUID)
    with edge.db.write() as conn:
        conn.execute(
            "UPDATE instances SET state = 'evicted' WHERE sop_instance_uid = ?", (evicted,)
        )
    with pynetdicom_destination() as (port, _rec), caplog.at_level(logging.DEBUG, "hpacs"):
        register(edge, "PYSCP", port)
        move(edge, study_identifier(study_uid), "PYSCP")
        get(edge, study_identifier(study_uid), ["1.2.840.10008.5.1.4.1.1.2"])
    lines = [r.getMessage() for r in caplog.records]
    (done,) = [m for m in lines if m.startswith("move done")]
    assert "delivered=2 failed=1 warning=0" in done and "destination=PYSCP" in done
    (got,) = [m for m in lines if m.startswith("get done")]
    assert "delivered=2 failed=1 warning=0" in got
    assert any(m.startswith("move failed sop_instance_uids=") and evicted in m for m in lines)


# ---- Storage Commitment -----------------------------------------------------------------------
def test_report_on_the_same_association_without_role_selection(
    edge: EdgeServer, tmp_path: Path
) -> None:
    """PS3.4 J.3.3: role selection is needed only for a separate association. A requester
    that keeps its association open gets the report there, proposed role or not."""
    pairs = _stored(edge, tmp_path)
    rec = Recorder()
    with modality(edge, "STORESCU", rec, waits=False) as assoc:
        assert _action(assoc, _request(pairs)) == SUCCESS
        assert rec.got_report.wait(10)  # before we release: on this association
    row = edge.db.reader().execute("SELECT state FROM commitment_reports").fetchone()
    assert row["state"] == "sent"


def test_failed_call_back_is_queued_with_backoff_and_listed(tmp_path: Path) -> None:
    http_port = free_port()
    with running_edge(edge_config(tmp_path, http_port=http_port)) as edge:
        pairs = _stored(edge, tmp_path)
        callback = free_port()  # the modality is not listening yet
        register(edge, "MODALITY", callback, ["store", "commit"])
        rec = Recorder()
        with modality(edge, "MODALITY", rec, waits=False) as assoc:
            assert _action(assoc, _request(pairs)) == SUCCESS
        db = edge.db.reader()
        wait_for(
            lambda: db.execute("SELECT attempts FROM commitment_reports").fetchone()[0] == 1,
            what="first call-back attempt",
        )
        row = db.execute("SELECT * FROM commitment_reports").fetchone()
        assert row["state"] == "pending" and row["next_attempt_at"] > time.time()
        assert "cannot connect" in row["last_error"]
        with running_http(edge) as http:
            status, listed = call_json(http, "/api/commitments")
        assert status == 200 and [r["state"] for r in listed] == ["pending"]
        assert listed[0]["calling_ae"] == "MODALITY" and listed[0]["attempts"] == 1
        with pynetdicom_destination(ae_title="MODALITY") as (port, listener):
            register(edge, "MODALITY", port, ["store", "commit"])
            with edge.db.write() as conn:  # the backoff has passed
                conn.execute("UPDATE commitment_reports SET next_attempt_at = 0")
            assert edge.retrier is not None
            edge.retrier.wake()
            assert listener.got_report.wait(10)
        wait_for(
            lambda: db.execute("SELECT state FROM commitment_reports").fetchone()[0] == "sent",
            what="report sent",
        )


def test_reports_left_sending_by_a_crash_are_requeued(edge: EdgeServer) -> None:
    queue = commitqueue.ReportQueue(edge.db)
    report_id = queue.add("MODALITY", "1.2.3", [("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", 0)])
    assert queue.claim(report_id)  # a process died while delivering it
    assert queue.recover() == 1
    (report,) = queue.due(time.time())
    assert report.id == report_id and report.verdicts == [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", 0)
    ]


# ---- TLS and protocol mismatches --------------------------------------------------------------
def _rejected_events(edge: EdgeServer) -> list[str]:
    rows = edge.db.reader().execute(
        "SELECT peer, detail FROM events WHERE kind = 'association_rejected'"
    )
    return [f"{r['peer']} {r['detail']}" for r in rows]


def test_tls_failures_are_one_warning_and_an_event(
    tmp_path: Path,
    pki: Pki,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    from edge import events

    with running_edge(_tls_config(tmp_path, pki, mutual=True)) as edge:
        plain, tls = edge.ports
        with caplog.at_level(logging.INFO):
            events.forget()  # one row per peer and minute (edge/events.py): one per case here
            # a plain DICOM client on the TLS port
            with socket.create_connection(("127.0.0.1", tls), timeout=5) as s:
                s.sendall(b"\x01\x00\x00\x00\x00\x10" + b"\0" * 16)
                try:
                    s.recv(100)
                except OSError:
                    pass  # reset by the edge: it never spoke DICOM to us
            wait_for(lambda: len(_rejected_events(edge)) >= 1, what="first event")
            events.forget()
            # a TLS client on the plain port
            ctx = ssl.create_default_context(cafile=str(pki.ca_file))
            with (
                socket.create_connection(("127.0.0.1", plain), timeout=5) as raw,
                pytest.raises((ssl.SSLError, OSError)),
            ):
                ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            wait_for(lambda: len(_rejected_events(edge)) >= 2, what="second event")
            events.forget()
            # a TLS client without the client certificate mutual TLS requires
            with socket.create_connection(("127.0.0.1", tls), timeout=5) as raw:
                try:
                    t = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                    t.recv(10)
                except (ssl.SSLError, OSError):
                    pass
            wait_for(lambda: len(_rejected_events(edge)) >= 3, what="three events")
    warnings = _hpacs_warnings(caplog)
    assert len(warnings) == 3, warnings
    assert all("peer=127.0.0.1" in w for w in warnings)
    assert any("TLS handshake failed" in w and "plain DICOM client" in w for w in warnings)
    assert any("a TLS client on the plain DICOM port" in w for w in warnings)
    assert any("TLS handshake failed" in w and "CERTIFICATE" in w.upper() for w in warnings)
    assert not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in caplog.text
