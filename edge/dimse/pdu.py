"""PDU framing (PS3.8 9.3): pure functions, no I/O.

Every PDU starts with type (1 byte), reserved (1), length (4, big endian). A P-DATA-TF body is a
run of PDV items: item length (4), presentation context ID (1), message control header (1:
bit 0 command/dataset, bit 1 last fragment), data. We send one PDV per P-DATA-TF, each
fragment at most `max_pdu - 6` bytes (the peer's Maximum Length Received bounds the PDU's
variable field), exactly as pynetdicom does (tests/test_dimse_codecs.py compares bytes).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
KNOWN_TYPES = frozenset(range(0x01, 0x08))

HEADER = struct.Struct(">BBI")
HEADER_LEN = HEADER.size
PDV_HEAD = struct.Struct(">BBIIBB")  # PDU header + PDV item length, context ID, control

# Message control header bits (PS3.8 E.2)
COMMAND = 0x01
LAST = 0x02

# A-ABORT source (PS3.8 9.3.8): 0 service user, 2 service provider
ABORT_USER = 0x00
ABORT_PROVIDER = 0x02
# A-ABORT provider reasons
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_UNRECOGNIZED_PARAMETER = 0x04
REASON_INVALID_PARAMETER = 0x06


class ProtocolError(Exception):
    """Bytes that break PS3.8; the association ends with an A-ABORT (`reason`)."""

    def __init__(self, message: str, reason: int = REASON_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


def parse_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(PDU type, length of what follows the header)."""
    pdu_type, _, length = HEADER.unpack_from(data)
    return pdu_type, length


def abort(source: int = ABORT_PROVIDER, reason: int = REASON_NOT_SPECIFIED) -> bytes:
    """An A-ABORT PDU."""
    return HEADER.pack(A_ABORT, 0, 4) + bytes((0, 0, source, reason))


def release_rq() -> bytes:
    return HEADER.pack(A_RELEASE_RQ, 0, 4) + b"\0\0\0\0"


def release_rp() -> bytes:
    return HEADER.pack(A_RELEASE_RP, 0, 4) + b"\0\0\0\0"


def reject(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4): result 1 permanent / 2 transient."""
    return HEADER.pack(A_ASSOCIATE_RJ, 0, 4) + bytes((0, result, source, reason))


def frame(
    context_id: int, data: bytes | memoryview, max_pdu: int, command: bool, out: list[Any]
) -> None:
    """Append P-DATA-TF PDUs carrying `data` (one PDV each) to `out` as header/payload pairs.

    `max_pdu` is the peer's Maximum Length Received (0: unlimited). The payloads are slices of
    `data`, so a large object is framed without copying; `b"".join(out)` is the wire form.
    """
    size = len(data)
    frag = max_pdu - 6 if max_pdu else max(size, 1)
    if frag <= 0:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for data")
    more = COMMAND if command else 0
    last = more | LAST
    view = memoryview(data)
    for start in range(0, max(size, 1), frag):
        chunk = view[start : start + frag]
        n = len(chunk)
        control = last if start + frag >= size else more
        out.append(PDV_HEAD.pack(P_DATA_TF, 0, n + 6, n + 2, context_id, control))
        out.append(chunk)


def message(context_id: int, command: bytes, dataset: bytes | None, max_pdu: int) -> bytes:
    """A whole DIMSE message (command, then its dataset if any) as P-DATA-TF PDUs; an empty
    dataset sends no fragment, like pynetdicom."""
    parts: list[Any] = []
    frame(context_id, command, max_pdu, True, parts)
    if dataset:
        frame(context_id, dataset, max_pdu, False, parts)
    return b"".join(parts)


def pdvs(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """The PDV items of a P-DATA-TF body as (context ID, control header, data); raises
    ProtocolError for an item that overruns the PDU or is shorter than its own header."""
    pos = 0
    end = len(body)
    if end < 6:
        raise ProtocolError("P-DATA-TF without a PDV item")
    while pos < end:
        if end - pos < 6:
            raise ProtocolError("truncated PDV item header")
        (length,) = struct.unpack_from(">I", body, pos)
        if length < 2 or length > end - pos - 4:
            raise ProtocolError(f"PDV item length {length} does not fit the PDU")
        yield body[pos + 4], body[pos + 5], body[pos + 6 : pos + 4 + length]
        pos += 4 + length
