"""edge/reactor.py: the event-driven loops and the direct C-STORE-RSP encoding."""

from __future__ import annotations

from pathlib import Path

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from edge import reactor
from edge.server import EdgeServer
from shared.synthetic import StudySpec, write_study
from tests.support.dcmtk import run
from tests.support.net import wait_for


@pytest.mark.parametrize(
    "msg_id,sop_class,sop_instance,status",
    [
        (1, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", 0x0000),
        (65535, "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4", 0xB000),
        (7, "1.2.840.10008.5.1.4.1.1.7", "1.2.826.0.1.3680043.10.1255." + "9" * 35, 0x0001),
    ],
)
def test_store_rsp_encoding_equals_pynetdicom(
    msg_id: int, sop_class: str, sop_instance: str, status: int
) -> None:
    p = C_STORE()
    p.MessageIDBeingRespondedTo = msg_id
    p.AffectedSOPClassUID = sop_class
    p.AffectedSOPInstanceUID = sop_instance
    p.Status = status
    m = C_STORE_RSP()
    m.primitive_to_message(p)
    expected = encode(m.command_set, True, True)
    assert reactor.encode_store_rsp(msg_id, sop_class, sop_instance, status) == expected


def test_reactors_serve_several_associations_and_release(
    edge: EdgeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert reactor.ENABLED
    encoded: list[int] = []
    real = reactor.encode_store_rsp

    def counting(*args: object) -> bytes:
        encoded.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(reactor, "encode_store_rsp", counting)  # our own function
    files = write_study(StudySpec(instances_per_series=20), tmp_path / "in")
    for chunk in (files[:10], files[10:]):
        r = run("storescu", "-aet", "STORESCU", "-aec", "HPACS", "127.0.0.1", edge.ports[0], *chunk)
        assert r.returncode == 0, r.stderr
    r = run("echoscu", "-aet", "ECHOSCU", "-aec", "HPACS", "127.0.0.1", edge.ports[0])
    assert r.returncode == 0, r.stderr
    n = edge.db.reader().execute("SELECT count(*) FROM instances").fetchone()[0]
    assert n == 20
    assert len(encoded) == 20  # every success response took the direct encoding
    wait_for(lambda: edge.active_associations() == 0, 5.0, "associations released")


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
def test_file_meta_encoding_equals_pydicom(sop_class: str, sop_instance: str, ts: str) -> None:
    import io

    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID
    from pynetdicom.dsutils import create_file_meta

    expected = io.BytesIO()
    kw = {"sop_class_uid": UID(sop_class), "sop_instance_uid": UID(sop_instance)}
    kw["transfer_syntax"] = UID(ts)
    write_file_meta_info(expected, create_file_meta(**kw))
    got = io.BytesIO()
    meta = reactor._create_file_meta(**kw)
    assert isinstance(meta, reactor._MetaBytes)  # the fast path was taken
    reactor._write_file_meta_info(got, meta)
    assert got.getvalue() == expected.getvalue()
