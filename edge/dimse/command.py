"""DIMSE command sets (PS3.7 6.3, 9.3, 10.3): encode and decode with `struct`, no pydicom.

A command set is group 0000 in implicit VR little endian, elements in tag order, led by
CommandGroupLength. Encoding pads UIs with NUL and text with a space, exactly as pydicom does
for pynetdicom (tests/test_dimse_codecs.py compares every message type we send byte for
byte). Decoding is strict about lengths (a hostile peer must not make us read past an element)
and lenient about what it does not know (unknown group 0000 elements are kept as bytes).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

# Command Field values (PS3.7 E.1)
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
N_GET_RQ, N_SET_RQ, N_CREATE_RQ, N_DELETE_RQ = 0x0110, 0x0120, 0x0140, 0x0150
N_ACTION_RQ, N_ACTION_RSP = 0x0130, 0x8130
C_CANCEL_RQ = 0x0FFF
RESPONSE_BIT = 0x8000

# Command Data Set Type: 0x0101 means no dataset follows; anything else means one does.
NO_DATASET = 0x0101
HAS_DATASET = 0x0001

# Elements of group 0000 (by element number) and their VRs.
GROUP_LENGTH = 0x0000
AFFECTED_SOP_CLASS = 0x0002
REQUESTED_SOP_CLASS = 0x0003
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
RESPONDING_TO = 0x0120
MOVE_DESTINATION = 0x0600
PRIORITY = 0x0700
DATASET_TYPE = 0x0800
STATUS = 0x0900
OFFENDING_ELEMENT = 0x0901
ERROR_COMMENT = 0x0902
ERROR_ID = 0x0903
AFFECTED_SOP_INSTANCE = 0x1000
REQUESTED_SOP_INSTANCE = 0x1001
EVENT_TYPE_ID = 0x1002
ATTRIBUTE_LIST = 0x1005
ACTION_TYPE_ID = 0x1008
REMAINING, COMPLETED, FAILED, WARNING = 0x1020, 0x1021, 0x1022, 0x1023
MOVE_ORIGINATOR_AET = 0x1030
MOVE_ORIGINATOR_ID = 0x1031

VR: dict[int, str] = {
    GROUP_LENGTH: "UL",
    AFFECTED_SOP_CLASS: "UI",
    REQUESTED_SOP_CLASS: "UI",
    COMMAND_FIELD: "US",
    MESSAGE_ID: "US",
    RESPONDING_TO: "US",
    MOVE_DESTINATION: "AE",
    PRIORITY: "US",
    DATASET_TYPE: "US",
    STATUS: "US",
    OFFENDING_ELEMENT: "AT",
    ERROR_COMMENT: "LO",
    ERROR_ID: "US",
    AFFECTED_SOP_INSTANCE: "UI",
    REQUESTED_SOP_INSTANCE: "UI",
    EVENT_TYPE_ID: "US",
    ATTRIBUTE_LIST: "AT",
    ACTION_TYPE_ID: "US",
    REMAINING: "US",
    COMPLETED: "US",
    FAILED: "US",
    WARNING: "US",
    MOVE_ORIGINATOR_AET: "AE",
    MOVE_ORIGINATOR_ID: "US",
}
MAX_COMMAND_BYTES = 64 * 1024  # a command set is a few hundred bytes; more is an attack
_ELEM = struct.Struct("<HHI")


class CommandError(ValueError):
    """A command set that cannot be decoded (the association is aborted)."""


def _value(vr: str, value: Any) -> bytes:
    if vr == "US":
        return struct.pack("<H", value)
    if vr == "UL":
        return struct.pack("<I", value)
    if vr == "AT":
        tags = value if isinstance(value, list | tuple) else [value]
        return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in tags)
    raw = value if isinstance(value, bytes) else str(value).encode("ascii", "replace")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


def encode(fields: Mapping[int, Any]) -> bytes:
    """The command set of `fields` ({element: value}; None values are left out)."""
    body = []
    for elem in sorted(fields):
        value = fields[elem]
        if value is None or elem == GROUP_LENGTH:
            continue
        data = _value(VR[elem], value)
        body.append(_ELEM.pack(0, elem, len(data)) + data)
    payload = b"".join(body)
    return _ELEM.pack(0, GROUP_LENGTH, 4) + struct.pack("<I", len(payload)) + payload


def _decode_value(vr: str | None, raw: bytes) -> Any:
    if vr in ("US", "UL"):
        size = 2 if vr == "US" else 4
        if len(raw) != size:
            raise CommandError(f"{vr} element of {len(raw)} bytes")
        return int.from_bytes(raw, "little")
    if vr == "AT":
        if len(raw) % 4:
            raise CommandError(f"AT element of {len(raw)} bytes")
        return [
            (g << 16) | e
            for g, e in (struct.unpack_from("<HH", raw, i) for i in range(0, len(raw), 4))
        ]
    if vr is None:
        return raw
    return raw.decode("ascii", "replace").rstrip("\0 ").lstrip(" ")


class Command:
    """A decoded command set: `values` maps element numbers of group 0000 to Python values."""

    __slots__ = ("values",)

    def __init__(self, values: dict[int, Any]) -> None:
        self.values = values

    def get(self, elem: int, default: Any = None) -> Any:
        return self.values.get(elem, default)

    @property
    def field(self) -> int:
        return int(self.values.get(COMMAND_FIELD, 0))

    @property
    def message_id(self) -> int:
        return int(self.values.get(MESSAGE_ID, 0))

    @property
    def responding_to(self) -> int:
        return int(self.values.get(RESPONDING_TO, 0))

    @property
    def status(self) -> int | None:
        status = self.values.get(STATUS)
        return int(status) if status is not None else None

    @property
    def has_dataset(self) -> bool:
        return self.values.get(DATASET_TYPE, NO_DATASET) != NO_DATASET

    @property
    def sop_class(self) -> str:
        return str(self.values.get(AFFECTED_SOP_CLASS) or self.values.get(REQUESTED_SOP_CLASS, ""))

    @property
    def sop_instance(self) -> str:
        value = self.values.get(AFFECTED_SOP_INSTANCE)
        return str(value if value is not None else self.values.get(REQUESTED_SOP_INSTANCE, ""))

    def __repr__(self) -> str:
        return f"Command(0x{self.field:04X}, {self.values!r})"


def decode(data: bytes | bytearray | memoryview) -> Command:
    """Decode a command set; raises CommandError for anything malformed."""
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandError(f"command set of {len(data)} bytes")
    raw = bytes(data)
    values: dict[int, Any] = {}
    pos, end = 0, len(raw)
    while pos < end:
        if end - pos < 8:
            raise CommandError("truncated element header")
        group, elem, length = _ELEM.unpack_from(raw, pos)
        pos += 8
        if group != 0:
            raise CommandError(f"element ({group:04X},{elem:04X}) outside group 0000")
        if length > end - pos:
            raise CommandError(f"element (0000,{elem:04X}) of {length} bytes overruns the set")
        values[elem] = _decode_value(VR.get(elem), raw[pos : pos + length])
        pos += length
    if COMMAND_FIELD not in values:
        raise CommandError("no Command Field")
    if DATASET_TYPE not in values:
        raise CommandError("no Command Data Set Type")
    return Command(values)


# ---- the messages hpacs sends ---------------------------------------------------------------
def _dataset_type(present: bool) -> int:
    return HAS_DATASET if present else NO_DATASET


def store_rq(
    message_id: int,
    sop_class: str,
    sop_instance: str,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> bytes:
    return encode(
        {
            AFFECTED_SOP_CLASS: sop_class,
            COMMAND_FIELD: C_STORE_RQ,
            MESSAGE_ID: message_id,
            PRIORITY: priority,
            DATASET_TYPE: HAS_DATASET,
            AFFECTED_SOP_INSTANCE: sop_instance,
            MOVE_ORIGINATOR_AET: originator_aet.strip() if originator_aet else None,
            MOVE_ORIGINATOR_ID: originator_id,
        }
    )


def store_rsp(
    responding_to: int, sop_class: str, sop_instance: str, status: int, comment: str = ""
) -> bytes:
    return encode(
        {
            AFFECTED_SOP_CLASS: sop_class,
            COMMAND_FIELD: C_STORE_RSP,
            RESPONDING_TO: responding_to,
            DATASET_TYPE: NO_DATASET,
            STATUS: status,
            AFFECTED_SOP_INSTANCE: sop_instance,
            ERROR_COMMENT: comment[:64] or None,
        }
    )


def echo_rsp(responding_to: int, sop_class: str, status: int) -> bytes:
    return encode(
        {
            AFFECTED_SOP_CLASS: sop_class,
            COMMAND_FIELD: C_ECHO_RSP,
            RESPONDING_TO: responding_to,
            DATASET_TYPE: NO_DATASET,
            STATUS: status,
        }
    )


def find_rsp(responding_to: int, sop_class: str, status: int, has_identifier: bool) -> bytes:
    return encode(
        {
            AFFECTED_SOP_CLASS: sop_class,
            COMMAND_FIELD: C_FIND_RSP,
            RESPONDING_TO: responding_to,
            DATASET_TYPE: _dataset_type(has_identifier),
            STATUS: status,
        }
    )


def retrieve_rsp(
    field: int,
    responding_to: int,
    sop_class: str,
    status: int,
    counts: tuple[int, int, int, int] | None,
    has_identifier: bool,
) -> bytes:
    """A C-MOVE-RSP or C-GET-RSP; `counts` = remaining, completed, failed, warning (a final
    response leaves `remaining` out by passing it as -1)."""
    fields: dict[int, Any] = {
        AFFECTED_SOP_CLASS: sop_class,
        COMMAND_FIELD: field,
        RESPONDING_TO: responding_to,
        DATASET_TYPE: _dataset_type(has_identifier),
        STATUS: status,
    }
    if counts is not None:
        for elem, n in zip((REMAINING, COMPLETED, FAILED, WARNING), counts, strict=True):
            if n >= 0:
                fields[elem] = n
    return encode(fields)


def n_action_rsp(
    responding_to: int, sop_class: str, sop_instance: str, action_type: int | None, status: int
) -> bytes:
    return encode(
        {
            AFFECTED_SOP_CLASS: sop_class,
            COMMAND_FIELD: N_ACTION_RSP,
            RESPONDING_TO: responding_to,
            DATASET_TYPE: NO_DATASET,
            STATUS: status,
            AFFECTED_SOP_INSTANCE: sop_instance,
            ACTION_TYPE_ID: action_type,
        }
    )


def n_event_report_rq(
    message_id: int, sop_class: str, sop_instance: str, event_type: int, has_info: bool
) -> bytes:
    return encode(
        {
            AFFECTED_SOP_CLASS: sop_class,
            COMMAND_FIELD: N_EVENT_REPORT_RQ,
            MESSAGE_ID: message_id,
            DATASET_TYPE: _dataset_type(has_info),
            AFFECTED_SOP_INSTANCE: sop_instance,
            EVENT_TYPE_ID: event_type,
        }
    )


def failure_rsp(request: Command, status: int) -> bytes:
    """The response to any request we cannot serve (an unsupported or malformed one)."""
    field = request.field | RESPONSE_BIT if request.field < RESPONSE_BIT else C_ECHO_RSP
    fields: dict[int, Any] = {
        COMMAND_FIELD: field,
        RESPONDING_TO: request.message_id,
        DATASET_TYPE: NO_DATASET,
        STATUS: status,
    }
    if request.sop_class:
        fields[AFFECTED_SOP_CLASS] = request.sop_class
    return encode(fields)
