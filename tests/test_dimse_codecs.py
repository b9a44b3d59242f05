"""edge/dimse codecs: the bytes we send are pynetdicom's, what pynetdicom sends we decode, and
hostile input only ever raises our own errors (fuzzed with hypothesis, bounded to seconds).

The one place where byte equality with pynetdicom is tested: command sets of every message we
send, P-DATA-TF fragmentation at several maximum PDU lengths, A-ABORT/A-RELEASE/A-ASSOCIATE-RJ.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pynetdicom import dimse_messages as dm
from pynetdicom import dimse_primitives as dp
from pynetdicom.dsutils import encode as pynetdicom_encode
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ, A_RELEASE_RP, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, A_P_ABORT

from edge.dimse import command as cmd
from edge.dimse import pdu

CT = "1.2.840.10008.5.1.4.1.1.2"
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
ODD_UID = "1.2.826.0.1.3680043.10.1255." + "9" * 35
VERIFICATION = "1.2.840.10008.1.1"


def _pynetdicom(message: Any, primitive: Any) -> bytes:
    message.primitive_to_message(primitive)
    return bytes(pynetdicom_encode(message.command_set, True, True))  # type: ignore[arg-type]


def _prim(cls: Any, **values: Any) -> Any:
    p = cls()
    for k, v in values.items():
        setattr(p, k, v)
    return p


def _ident() -> BytesIO:
    return BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")


SENT = {
    "store-rq": (
        cmd.store_rq(7, CT, ODD_UID),
        dm.C_STORE_RQ(),
        _prim(
            dp.C_STORE,
            MessageID=7,
            AffectedSOPClassUID=CT,
            AffectedSOPInstanceUID=ODD_UID,
            Priority=2,
            DataSet=BytesIO(b"\0\0"),
        ),
    ),
    "store-rq-move-originator": (
        cmd.store_rq(65535, CT, "1.2.3.4", 2, "MOVESCU", 3),
        dm.C_STORE_RQ(),
        _prim(
            dp.C_STORE,
            MessageID=65535,
            AffectedSOPClassUID=CT,
            AffectedSOPInstanceUID="1.2.3.4",
            Priority=2,
            MoveOriginatorApplicationEntityTitle="MOVESCU",
            MoveOriginatorMessageID=3,
            DataSet=BytesIO(b"\0\0"),
        ),
    ),
    "store-rsp": (
        cmd.store_rsp(9, CT, ODD_UID, 0xB000),
        dm.C_STORE_RSP(),
        _prim(
            dp.C_STORE,
            MessageIDBeingRespondedTo=9,
            AffectedSOPClassUID=CT,
            AffectedSOPInstanceUID=ODD_UID,
            Status=0xB000,
        ),
    ),
    "echo-rsp": (
        cmd.echo_rsp(3, VERIFICATION, 0),
        dm.C_ECHO_RSP(),
        _prim(dp.C_ECHO, MessageIDBeingRespondedTo=3, AffectedSOPClassUID=VERIFICATION, Status=0),
    ),
    "find-rsp-pending": (
        cmd.find_rsp(5, FIND, 0xFF00, True),
        dm.C_FIND_RSP(),
        _prim(
            dp.C_FIND,
            MessageIDBeingRespondedTo=5,
            AffectedSOPClassUID=FIND,
            Status=0xFF00,
            Identifier=_ident(),
        ),
    ),
    "find-rsp-final": (
        cmd.find_rsp(5, FIND, 0, False),
        dm.C_FIND_RSP(),
        _prim(dp.C_FIND, MessageIDBeingRespondedTo=5, AffectedSOPClassUID=FIND, Status=0),
    ),
    "move-rsp-pending": (
        cmd.retrieve_rsp(cmd.C_MOVE_RSP, 2, MOVE, 0xFF00, (4, 1, 0, 0), False),
        dm.C_MOVE_RSP(),
        _prim(
            dp.C_MOVE,
            MessageIDBeingRespondedTo=2,
            AffectedSOPClassUID=MOVE,
            Status=0xFF00,
            NumberOfRemainingSuboperations=4,
            NumberOfCompletedSuboperations=1,
            NumberOfFailedSuboperations=0,
            NumberOfWarningSuboperations=0,
        ),
    ),
    "get-rsp-final-failed-list": (
        cmd.retrieve_rsp(cmd.C_GET_RSP, 2, GET, 0xB000, (-1, 3, 1, 0), True),
        dm.C_GET_RSP(),
        _prim(
            dp.C_GET,
            MessageIDBeingRespondedTo=2,
            AffectedSOPClassUID=GET,
            Status=0xB000,
            NumberOfCompletedSuboperations=3,
            NumberOfFailedSuboperations=1,
            NumberOfWarningSuboperations=0,
            Identifier=_ident(),
        ),
    ),
    "n-action-rsp": (
        cmd.n_action_rsp(4, COMMITMENT, COMMITMENT_INSTANCE, 1, 0),
        dm.N_ACTION_RSP(),
        _prim(
            dp.N_ACTION,
            MessageIDBeingRespondedTo=4,
            AffectedSOPClassUID=COMMITMENT,
            AffectedSOPInstanceUID=COMMITMENT_INSTANCE,
            ActionTypeID=1,
            Status=0,
        ),
    ),
    "n-event-report-rq": (
        cmd.n_event_report_rq(11, COMMITMENT, COMMITMENT_INSTANCE, 2, True),
        dm.N_EVENT_REPORT_RQ(),
        _prim(
            dp.N_EVENT_REPORT,
            MessageID=11,
            AffectedSOPClassUID=COMMITMENT,
            AffectedSOPInstanceUID=COMMITMENT_INSTANCE,
            EventTypeID=2,
            EventInformation=_ident(),
        ),
    ),
}


@pytest.mark.parametrize("name", list(SENT))
def test_command_sets_we_send_equal_pynetdicom(name: str) -> None:
    ours, message, primitive = SENT[name]
    assert ours == _pynetdicom(message, primitive)


RECEIVED = {
    "echo-rq": (dm.C_ECHO_RQ(), _prim(dp.C_ECHO, MessageID=1, AffectedSOPClassUID=VERIFICATION)),
    "store-rq": SENT["store-rq-move-originator"][1:],
    "find-rq": (
        dm.C_FIND_RQ(),
        _prim(dp.C_FIND, MessageID=3, AffectedSOPClassUID=FIND, Priority=0, Identifier=_ident()),
    ),
    "move-rq": (
        dm.C_MOVE_RQ(),
        _prim(
            dp.C_MOVE,
            MessageID=4,
            AffectedSOPClassUID=MOVE,
            Priority=1,
            MoveDestination="STORESCP",
            Identifier=_ident(),
        ),
    ),
    "get-rq": (
        dm.C_GET_RQ(),
        _prim(dp.C_GET, MessageID=5, AffectedSOPClassUID=GET, Priority=0, Identifier=_ident()),
    ),
    "cancel-rq": (dm.C_CANCEL_RQ(), _prim(dp.C_CANCEL, MessageIDBeingRespondedTo=4)),
    "n-action-rq": (
        dm.N_ACTION_RQ(),
        _prim(
            dp.N_ACTION,
            MessageID=6,
            RequestedSOPClassUID=COMMITMENT,
            RequestedSOPInstanceUID=COMMITMENT_INSTANCE,
            ActionTypeID=1,
            ActionInformation=_ident(),
        ),
    ),
    "n-event-report-rsp": (
        dm.N_EVENT_REPORT_RSP(),
        _prim(
            dp.N_EVENT_REPORT,
            MessageIDBeingRespondedTo=11,
            AffectedSOPClassUID=COMMITMENT,
            AffectedSOPInstanceUID=COMMITMENT_INSTANCE,
            EventTypeID=2,
            Status=0,
        ),
    ),
}


@pytest.mark.parametrize("name", list(RECEIVED))
def test_commands_pynetdicom_sends_decode(name: str) -> None:
    message, primitive = RECEIVED[name]
    decoded = cmd.decode(_pynetdicom(message, primitive))
    for element in message.command_set:
        keyword, value = element.keyword, element.value
        if keyword == "CommandGroupLength" or value in (None, ""):
            continue
        got = decoded.get(element.tag.element)
        if isinstance(value, int):
            assert got == value, keyword
        else:
            assert got == str(value).strip(), keyword
    assert decoded.has_dataset == (
        getattr(primitive, "Identifier", None) is not None
        or getattr(primitive, "DataSet", None) is not None
        or getattr(primitive, "ActionInformation", None) is not None
    )


@pytest.mark.parametrize("max_pdu", [0, 16384, 64, 20, 7])
@pytest.mark.parametrize("dataset_len", [0, 1, 13, 5000])
def test_framing_equals_pynetdicom(max_pdu: int, dataset_len: int) -> None:
    data = bytes(i % 251 for i in range(dataset_len))
    p = _prim(
        dp.C_STORE,
        MessageID=7,
        AffectedSOPClassUID=CT,
        AffectedSOPInstanceUID=ODD_UID,
        Priority=2,
        DataSet=BytesIO(data),
    )
    message = dm.C_STORE_RQ()
    message.primitive_to_message(p)
    expected = []
    for primitive in message.encode_msg(3, max_pdu):
        tf = P_DATA_TF()
        tf.from_primitive(primitive)
        expected.append(tf.encode())
    assert pdu.message(3, cmd.store_rq(7, CT, ODD_UID), data, max_pdu) == b"".join(expected)


def test_abort_release_reject_equal_pynetdicom() -> None:
    ab = _prim(A_P_ABORT, provider_reason=0x02)
    expected = A_ABORT_RQ()
    expected.from_primitive(ab)
    assert pdu.abort(pdu.ABORT_PROVIDER, 0x02) == expected.encode()
    assert pdu.release_rq() == A_RELEASE_RQ().encode()
    assert pdu.release_rp() == A_RELEASE_RP().encode()
    rj = _prim(A_ASSOCIATE, result=0x01, result_source=0x01, diagnostic=0x03)
    expected_rj = A_ASSOCIATE_RJ()
    expected_rj.from_primitive(rj)
    assert pdu.reject(0x01, 0x01, 0x03) == expected_rj.encode()


def test_pdvs_of_a_framed_message() -> None:
    data = pdu.message(5, b"\x01\x02\x03", b"abcdefgh", 10)
    got = []
    while data:
        kind, length = pdu.parse_header(data)
        assert kind == pdu.P_DATA_TF
        got += [(c, ctl, bytes(d)) for c, ctl, d in pdu.pdvs(memoryview(data[6 : 6 + length]))]
        data = data[6 + length :]
    assert got == [(5, 0x03, b"\x01\x02\x03"), (5, 0x00, b"abcd"), (5, 0x02, b"efgh")]


def test_decoded_identifier_round_trip() -> None:
    from edge.dimse import dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ["1.2.3", "1.2.4"]
    for ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"):
        back = dataset.decode(dataset.encode(ds, ts), ts)
        assert back.QueryRetrieveLevel == "STUDY"
        assert list(back.StudyInstanceUID) == ["1.2.3", "1.2.4"]
    with pytest.raises(dataset.DatasetError):
        dataset.decode(b"\x08\x00\x52\x00\xff\xff\xff\x0fST", "1.2.840.10008.1.2")


# ---- fuzz: hostile bytes raise our own errors, nothing else -----------------------------------
FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_command_decoder(data: bytes) -> None:
    try:
        decoded = cmd.decode(data)
    except cmd.CommandError:
        return
    assert isinstance(decoded.field, int)


_elements = st.lists(
    st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=24)), max_size=8
)


@FUZZ
@given(_elements, st.binary(max_size=8))
def test_fuzz_command_decoder_structured(
    elements: list[tuple[int, int, bytes]], tail: bytes
) -> None:
    """Well-formed element framing with hostile values, lengths and groups."""
    raw = b"".join(struct.pack("<HHI", g & 1 and 0, e, len(v)) + v for g, e, v in elements)
    for data in (raw, raw + tail, raw[:-3]):
        try:
            cmd.decode(data)
        except cmd.CommandError:
            pass


@FUZZ
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.sampled_from([CT, ODD_UID, "1.2", ""]),
    st.integers(0, 0xFFFF),
)
def test_fuzz_command_round_trip(field: int, msg_id: int, uid: str, status: int) -> None:
    raw = cmd.encode(
        {
            cmd.AFFECTED_SOP_CLASS: uid,
            cmd.COMMAND_FIELD: field,
            cmd.MESSAGE_ID: msg_id,
            cmd.DATASET_TYPE: cmd.NO_DATASET,
            cmd.STATUS: status,
        }
    )
    back = cmd.decode(raw)
    assert (back.field, back.message_id, back.status, back.sop_class) == (
        field,
        msg_id,
        status,
        uid,
    )


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_pdv_parser(body: bytes) -> None:
    try:
        for ctx, control, data in pdu.pdvs(memoryview(body)):
            assert 0 <= ctx <= 255 and 0 <= control <= 255
            assert len(data) <= len(body)
    except pdu.ProtocolError:
        pass


@FUZZ
@given(st.binary(min_size=0, max_size=64), st.integers(0, 300))
def test_fuzz_framing_round_trip(data: bytes, max_pdu: int) -> None:
    if 0 < max_pdu <= 6:
        with pytest.raises(ValueError):
            pdu.message(1, b"\x01\x02", data, max_pdu)
        return
    wire = pdu.message(1, b"\x01\x02", data, max_pdu)
    command, dataset = b"", b""
    while wire:
        _, length = pdu.parse_header(wire)
        for _, control, frag in pdu.pdvs(memoryview(wire[6 : 6 + length])):
            if control & pdu.COMMAND:
                command += frag
            else:
                dataset += frag
        wire = wire[6 + length :]
    assert (command, dataset) == (b"\x01\x02", data)


def _valid_rq() -> bytes:
    from tests.support.wire import CT, EXPLICIT, associate_rq

    return associate_rq(contexts=[(CT, EXPLICIT), ("1.2.840.10008.1.1", EXPLICIT)])


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about each invalid UID
@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_associate_rq_decoder(data: bytes) -> None:
    """Hostile A-ASSOCIATE-RQ bytes (pynetdicom's PDU classes underneath) only ever raise
    ProtocolError: header plus random body, and a valid request with random bytes changed."""
    from edge.dimse.negotiation import decode_request

    for candidate in (b"\x01\x00" + len(data).to_bytes(4, "big") + data, _mutate(data)):
        try:
            decode_request(candidate)
        except pdu.ProtocolError:
            pass


def _mutate(noise: bytes) -> bytes:
    rq = bytearray(_valid_rq())
    for i, b in enumerate(noise[:40]):
        rq[(i * 37 + b) % len(rq)] = b
    return bytes(rq)


def test_valid_associate_rq_decodes() -> None:
    from edge.dimse.negotiation import decode_request

    req = decode_request(_valid_rq())
    assert (req.calling_ae, req.called_ae, req.max_pdu) == ("ECHOSCU", "HPACS", 16384)
    assert [str(cx.abstract_syntax) for cx in req.contexts] == [CT, VERIFICATION]
