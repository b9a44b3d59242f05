"""edge/dimse engine on the wire: one thread per association serves every message, responses
are our encoders' bytes, and anything that breaks PS3.8 ends in an A-ABORT (replaces the tests
of edge/reactor.py, which the engine replaced)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from edge.dimse import command as cmd
from edge.dimse import spool
from edge.server import EdgeServer
from shared.synthetic import StudySpec, write_study
from tests.support.dcmtk import run
from tests.support.net import wait_for
from tests.support.wire import CT, EXPLICIT, associated, p_data, recv_pdu

A_ABORT = 0x07


@pytest.mark.parametrize(
    "sop_class,sop_instance,ts",
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2.1"),
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4", "1.2.840.10008.1.2.4.50"),
        (
            "1.2.840.10008.5.1.4.1.1.7",
            "1.2.826.0.1.3680043.10.1255." + "9" * 35,
            "1.2.840.10008.1.2",
        ),
    ],
)
def test_spooled_file_meta_equals_pydicom(sop_class: str, sop_instance: str, ts: str) -> None:
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID
    from pynetdicom.dsutils import create_file_meta

    expected = io.BytesIO()
    kw = {"sop_class_uid": UID(sop_class), "sop_instance_uid": UID(sop_instance)}
    kw["transfer_syntax"] = UID(ts)
    write_file_meta_info(expected, create_file_meta(**kw))
    assert spool.encode_file_meta(sop_class, sop_instance, ts) == expected.getvalue()


def test_one_thread_serves_each_association(
    edge: EdgeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every C-STORE of an association is decoded, ingested and answered in the thread that
    owns its socket (no hand-off per message); every response is our encoder's."""
    encoded: list[int] = []
    threads: list[tuple[str, int]] = []
    real_rsp = cmd.store_rsp
    real_ingest = edge.ingestor.ingest_temp

    def counting(*args: object, **kw: object) -> bytes:
        encoded.append(1)
        return real_rsp(*args, **kw)  # type: ignore[arg-type]

    def ingest(*args: object, **kw: object) -> object:
        threads.append((threading.current_thread().name, threading.get_ident()))
        return real_ingest(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cmd, "store_rsp", counting)  # our own functions
    monkeypatch.setattr(edge.ingestor, "ingest_temp", ingest)
    files = write_study(StudySpec(instances_per_series=20), tmp_path / "in")
    for chunk in (files[:10], files[10:]):
        r = run("storescu", "-aet", "STORESCU", "-aec", "HPACS", "127.0.0.1", edge.ports[0], *chunk)
        assert r.returncode == 0, r.stderr
    r = run("echoscu", "-aet", "ECHOSCU", "-aec", "HPACS", "127.0.0.1", edge.ports[0])
    assert r.returncode == 0, r.stderr
    n = edge.db.reader().execute("SELECT count(*) FROM instances").fetchone()[0]
    assert n == 20
    assert len(encoded) == 20
    assert len({t for t in threads[:10]}) == 1 and len({t for t in threads[10:]}) == 1
    assert threads[0][0] == "dimse"  # the connection's own thread, not a worker
    wait_for(lambda: edge.active_associations() == 0, 5.0, "associations released")


def _aborted(sock: object) -> bool:
    got = recv_pdu(sock)  # type: ignore[arg-type]
    return got is None or got[0] == A_ABORT


@pytest.mark.parametrize(
    "payload",
    [
        b"\x09\x00\x00\x00\x00\x04abcd",  # an unknown PDU type after association
        b"\x01\x00\x00\x00\x00\x04abcd",  # an A-ASSOCIATE-RQ inside an association
        p_data(3, 0x03, b"\0" * 12),  # a PDV on a context that was not accepted
        p_data(1, 0x03, b"\x00\x00\x00\x00\x04\x00\x00\x00"),  # a truncated command set
        p_data(1, 0x03, b"\x08\x00\x00\x01\x02\x00\x00\x00\x30\x00"),  # an element outside 0000
        p_data(1, 0x00, b"dataset without its command"),
        b"\x04\x00\x00\x00\x00\x08\x00\x00\x01\x00\x01\x03\x00\x00",  # a PDV longer than its PDU
    ],
)
def test_protocol_errors_end_in_an_abort(edge: EdgeServer, payload: bytes) -> None:
    sock = associated(edge.ports[0])
    try:
        sock.sendall(payload)
        assert _aborted(sock)
    finally:
        sock.close()
    wait_for(lambda: edge.active_associations() == 0, 5.0, "slot released")


def test_an_unsupported_request_is_answered(edge: EdgeServer) -> None:
    """An N-GET we do not serve gets 0x0211 (unrecognised operation), not silence."""
    sock = associated(edge.ports[0])
    try:
        command = cmd.encode(
            {
                cmd.REQUESTED_SOP_CLASS: "1.2.840.10008.1.1",
                cmd.COMMAND_FIELD: cmd.N_GET_RQ,
                cmd.MESSAGE_ID: 9,
                cmd.DATASET_TYPE: cmd.NO_DATASET,
                cmd.REQUESTED_SOP_INSTANCE: "1.2.3",
            }
        )
        sock.sendall(p_data(1, 0x03, command))
        got = recv_pdu(sock)
        assert got is not None and got[0] == 0x04
        rsp = cmd.decode(got[1][6:])
        assert (rsp.field, rsp.responding_to, rsp.status) == (0x8110, 9, 0x0211)
    finally:
        sock.close()


def test_pdu_over_the_negotiated_maximum_is_aborted_unread(edge: EdgeServer) -> None:
    """A P-DATA-TF header declaring 4 GB after association: A-ABORT at once, nothing buffered."""
    sock = associated(edge.ports[0], calling="STORESCU", contexts=[(CT, EXPLICIT)])
    try:
        sock.sendall(b"\x04\x00\xff\xff\xff\xf0")
        got = recv_pdu(sock, timeout=5)
        assert got is not None and got == (A_ABORT, b"\x00\x00\x02\x06")
    finally:
        sock.close()


def _bad_datasets() -> tuple[dict[str, bytes], str]:
    import struct

    from shared.synthetic import StudySpec, iter_study
    from tests.support.edge import encoded_dataset

    ds = next(iter_study(StudySpec(instances_per_series=1, rows=8, columns=8)))
    raw = encoded_dataset(ds)
    pix = raw.index(struct.pack("<HH", 0x7FE0, 0x0010))
    sq = struct.pack("<HH", 0x0040, 0x0275) + b"SQ\0\0\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    deep = (sq + item) * 1000 + (b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0") * 1000
    return {
        "unclosed undefined-length sequence": raw[:pix] + sq + item + raw[pix:],
        "1,000-deep sequences": raw[:pix] + deep + raw[pix:],
        "truncated": raw[: pix // 2],
    }, str(ds.SOPInstanceUID)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_malformed_datasets_are_0xc000_and_the_association_goes_on(edge: EdgeServer) -> None:
    """Unclosed undefined-length elements, 1,000-deep sequences, truncation: 0xC000 each (as
    before the engine existed), nothing kept, and the same association still serves."""
    datasets, uid = _bad_datasets()
    with associated(edge.ports[0], calling="STORESCU", contexts=[(CT, EXPLICIT)]) as sock:
        for n, (name, data) in enumerate(datasets.items(), start=1):
            sock.sendall(p_data(1, 0x03, cmd.store_rq(n, CT, uid)) + p_data(1, 0x02, data))
            got = recv_pdu(sock)
            assert got is not None and got[0] == 0x04, name
            rsp = cmd.decode(got[1][6:])
            assert (rsp.responding_to, rsp.status) == (n, 0xC000), name
    assert edge.db.reader().execute("SELECT count(*) FROM instances").fetchone()[0] == 0
    assert not any(edge.cache.tmp.iterdir())
