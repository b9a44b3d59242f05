"""edge.findwire + edge.dimse: directly encoded C-FIND responses are the bytes pynetdicom
would send (identifiers here; command sets and framing also in tests/test_dimse_codecs.py)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as StudyRootFind

from edge import find, findwire, query
from edge.dimse import command as cmd
from edge.dimse import pdu
from edge.find import STUDY_ROOT_FIND
from shared.errors import PENDING, SUCCESS
from tests.support.edge import association, edge_config, running_edge
from tests.support.find import index_db
from tests.test_find import NODES, _bulk_studies
from tests.test_tls import Pki, _client_ctx, _tls_config, pki  # noqa: F401 (pki: a fixture)

IMPLICIT, EXPLICIT = findwire.IMPLICIT_LE, findwire.EXPLICIT_LE

ELEMENTS = {
    "ascii": [
        (0x00080052, "CS", "STUDY"),
        (0x00100020, "LO", "P1"),
        (0x00100010, "PN", "SMITH^JOHN"),
        (0x0020000D, "UI", "1.2.3.45"),
        (0x00080020, "DA", "20240101"),
        (0x00080030, "TM", "101010.5"),
        (0x00201206, "IS", 3),
        (0x00201208, "IS", None),
        (0x00080061, "CS", ["CT", "MR"]),
        (0x00080062, "UI", ["1.2.840.10008.5.1.4.1.1.2", "1.2.3"]),
        (0x00280010, "US", 512),
        (0x00280011, "US", None),
        (0x00080054, "AE", "HPACS"),
        (0x00081032, "SQ", []),
        (0x00090010, "UN", None),
        (0x00081030, "LO", ""),
    ],
    "utf8": [
        (0x00080005, "CS", "ISO_IR 192"),
        (0x00080052, "CS", "PATIENT"),
        (0x00100010, "PN", "山田^太郎"),
        (0x00100020, "LO", "Müller1"),
    ],
}


@pytest.mark.parametrize("ts", [IMPLICIT, EXPLICIT])
@pytest.mark.parametrize("label", list(ELEMENTS))
def test_identifier_equals_pydicom(label: str, ts: str) -> None:
    elements = ELEMENTS[label]
    ours = findwire.encode_identifier(elements, ts == EXPLICIT, label == "utf8")
    assert ours == findwire.dataset_bytes(findwire.as_dataset(elements), ts)


def test_unknown_vr_is_left_to_pydicom() -> None:
    with pytest.raises(findwire.Unencodable):
        findwire.encode_identifier([(0x00181000, "FD", 1.5)], True, False)


LEVEL_KEYS = {
    "PATIENT": ["PatientName", "PatientID", "PatientBirthDate", "NumberOfPatientRelatedStudies"],
    "STUDY": [
        "PatientName",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
        "NumberOfStudyRelatedInstances",
        "AccessionNumber",
    ],
    "SERIES": ["SeriesInstanceUID", "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances"],
    "IMAGE": ["SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames"],
}


@pytest.mark.parametrize("ts", [IMPLICIT, EXPLICIT])
@pytest.mark.parametrize("level", list(LEVEL_KEYS))
def test_row_encoder_equals_pydicom(tmp_path: Path, level: str, ts: str) -> None:
    """Every row of a real index at each level: the per-query encoder's bytes are pydicom's."""
    db = index_db(tmp_path)
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for keyword in LEVEL_KEYS[level]:
        setattr(ident, keyword, "")
    ident.RetrieveAETitle = ""
    ident.InstitutionName = ""  # not indexed: returned empty
    ident.ReferencedStudySequence = []
    requested = {e.keyword: e.value for e in ident}
    q = query.build(requested, query.PATIENT_ROOT)
    extras = find._extras(ident, q, "HPACS")
    encode = find.row_encoder(q, extras, ts)
    rows = db.reader().execute(q.sql, q.params).fetchall()
    assert rows
    fast = findwire.RowEncoder(  # what row_encoder uses for these syntaxes (no fallback)
        [(*find._tag_vr(k), query.ATTRS[k].kind) for k in q.keywords],
        [(0x00080052, "CS", level), *extras],
        ts == EXPLICIT,
    )
    declared = 0
    for row in rows:
        expected = findwire.dataset_bytes(find.response(q, row, extras), ts)
        assert encode(row) == expected == fast.encode(row)
        declared += b"ISO_IR 192" in expected
    assert declared or level in ("SERIES", "IMAGE")  # non-ASCII names at PATIENT and STUDY
    db.close()


def _pynetdicom_pdus(identifier: bytes | None, status: int, max_pdu: int) -> bytes:
    rsp = C_FIND()
    rsp.MessageID = 7
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = STUDY_ROOT_FIND
    rsp.Status = status
    rsp.Identifier = BytesIO(identifier) if identifier is not None else None
    msg = C_FIND_RSP()
    msg.primitive_to_message(rsp)
    out = []
    for primitive in msg.encode_msg(3, max_pdu):
        tf = P_DATA_TF()
        tf.from_primitive(primitive)
        out.append(tf.encode())
    return b"".join(out)


@pytest.mark.parametrize("max_pdu", [0, 16384, 64])
def test_messages_equal_pynetdicom(max_pdu: int) -> None:
    identifier = findwire.encode_identifier(ELEMENTS["ascii"], False, False)
    pending = cmd.find_rsp(7, STUDY_ROOT_FIND, PENDING, True)
    ours = pdu.message(3, pending, identifier, max_pdu)
    assert ours == _pynetdicom_pdus(identifier, PENDING, max_pdu)
    final = cmd.find_rsp(7, STUDY_ROOT_FIND, SUCCESS, False)
    assert pdu.message(3, final, None, max_pdu) == _pynetdicom_pdus(None, SUCCESS, max_pdu)


def test_frame_decodes_as_p_data_tf() -> None:
    items: list[object] = []
    pdu.frame(5, b"abcd", 0, True, items)
    pdu.frame(5, bytes(range(11)), 0, False, items)
    data = b"".join(items)  # type: ignore[arg-type]
    decoded = []
    while data:
        length = int.from_bytes(data[2:6], "big")
        tf = P_DATA_TF()
        tf.decode(data[: 6 + length])
        decoded += tf.presentation_data_value_items
        data = data[6 + length :]
    assert [(item.presentation_context_id, item.data) for item in decoded] == [
        (5, b"\x03abcd"),
        (5, b"\x02" + bytes(range(11))),
    ]


@pytest.mark.parametrize("ts", [IMPLICIT, EXPLICIT])
def test_small_pdu_peer_gets_every_match(tmp_path: Path, ts: str) -> None:
    """A peer with a tiny maximum PDU length and one transfer syntax decodes every response."""
    with running_edge(edge_config(tmp_path, nodes=NODES)) as server:
        _bulk_studies(server, 120, "P77")
        ae = AE(ae_title="PYSCU")
        ae.maximum_pdu_size = 64
        ae.add_requested_context(StudyRootFind, [ts])
        assoc = ae.associate("127.0.0.1", server.ports[0], ae_title="HPACS")
        assert assoc.is_established
        try:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.PatientID = "P77"
            ds.StudyInstanceUID = ""
            ds.NumberOfStudyRelatedInstances = ""
            for _ in range(2):  # twice on one association: the final response stays ordered
                got = list(assoc.send_c_find(ds, StudyRootFind))
                statuses = [s.Status for s, _ in got]
                assert statuses == [PENDING] * 120 + [SUCCESS]
                uids = {str(i.StudyInstanceUID) for _, i in got[:-1]}
                assert len(uids) == 120
                assert {int(i.NumberOfStudyRelatedInstances) for _, i in got[:-1]} == {1}
        finally:
            assoc.release()
            ae.shutdown()


def test_tls_association_gets_every_match(tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    """Over TLS the same engine frames and writes the responses: same answers, final last."""
    with running_edge(_tls_config(tmp_path, pki, mutual=False, nodes=NODES)) as server:
        _bulk_studies(server, 40, "P78")
        ctx = _client_ctx(pki, with_cert=False)
        contexts = [(STUDY_ROOT_FIND, [EXPLICIT])]
        with association(
            server.cfg.edge.tls.port, "PYSCU", contexts=contexts, tls_args=(ctx, "127.0.0.1")
        ) as assoc:
            assert assoc.is_established
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.PatientID = "P78"
            ds.StudyInstanceUID = ""
            got = list(assoc.send_c_find(ds, StudyRootFind))
    assert [s.Status for s, _ in got] == [PENDING] * 40 + [SUCCESS]
    assert len({str(i.StudyInstanceUID) for _, i in got[:-1]}) == 40
