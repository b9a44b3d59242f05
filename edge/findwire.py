"""C-FIND responses encoded and framed directly, written to the association's socket.

Why: pynetdicom spends ~1.5 ms of server CPU per pending C-FIND response (a pydicom encode of
the identifier, a pydicom Dataset and encode for the command set, a P-DATA primitive handed
to the DUL thread and encoded there again) while our SQL and row mapping take well under
0.1 ms per match. Here the identifier is encoded once from (tag, VR, value) triples, the
C-FIND-RSP command set is packed with `struct`, and the P-DATA-TF PDUs (fragmented to the
peer's maximum PDU length, one PDV each, like pynetdicom) are written with one `sendall` per
batch. The bytes are pynetdicom's own (tests/test_find_wire.py decodes and compares), so a
workstation cannot tell the paths apart.

The pure encoders have no I/O; `Wire` is the thin socket adapter. Anything the encoder does
not handle (a VR it does not know, a transfer syntax other than implicit/explicit VR little
endian) raises `Unencodable`, and the caller uses pydicom for that identifier.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode as pydicom_encode
from pynetdicom.pdu_primitives import P_DATA

from edge import reactor

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
C_FIND_RSP = 0x8020
_NO_DATASET = 0x0101
_HAS_DATASET = 0x0001
# Explicit VR elements with a 2-reserved-byte + 4-byte length header (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    ["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]
)
_TEXT_VRS = frozenset(
    [
        "AE",
        "AS",
        "CS",
        "DA",
        "DS",
        "DT",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "ST",
        "TM",
        "UC",
        "UI",
        "UR",
        "UT",
    ]
)
# Sent in one sendall at most this much at a time; C-CANCEL is checked before every response.
FLUSH_BYTES = 16384

Element = tuple[int, str, Any]  # tag, VR, value (str, int, list of those, None, [] for SQ)


class Unencodable(Exception):
    """An element or transfer syntax the direct encoder does not handle (pydicom will)."""


def _value(vr: str, value: Any, utf8: bool) -> bytes:
    if value is None or (isinstance(value, list) and not value):
        return b""
    if vr == "US":
        items = value if isinstance(value, list) else [value]
        return b"".join(struct.pack("<H", int(v)) for v in items)
    if vr not in _TEXT_VRS:
        raise Unencodable(vr)
    items = value if isinstance(value, list) else [value]
    text = "\\".join(str(v) for v in items)
    raw = text.encode("utf-8") if utf8 else text.encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


def encode_identifier(elements: Iterable[Element], explicit: bool, utf8: bool) -> bytes:
    """A response identifier in implicit or explicit VR little endian, elements by tag.

    Byte-equal to pydicom's write_dataset of the same elements (tested); `utf8` says the
    identifier declares ISO_IR 192 (its text values are UTF-8, else ASCII).
    """
    parts: list[bytes] = []
    for tag, vr, value in sorted(elements, key=lambda e: e[0]):
        if vr == "SQ" and value:
            raise Unencodable("SQ")
        data = _value(vr, value, utf8)
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if not explicit:
            parts.append(head + struct.pack("<I", len(data)))
        elif vr in _LONG_VRS:
            parts.append(head + vr.encode("ascii") + struct.pack("<HI", 0, len(data)))
        elif len(vr) == 2 and vr.isupper():
            if len(data) > 0xFFFF:
                raise Unencodable("long value")
            parts.append(head + vr.encode("ascii") + struct.pack("<H", len(data)))
        else:
            raise Unencodable(vr)
        parts.append(data)
    return b"".join(parts)


def _header(tag: int, vr: str, explicit: bool, length: int) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if not explicit:
        return head + struct.pack("<I", length)
    if vr in _LONG_VRS:
        return head + vr.encode("ascii") + struct.pack("<HI", 0, length)
    if len(vr) == 2 and vr.isupper() and length <= 0xFFFF:
        return head + vr.encode("ascii") + struct.pack("<H", length)
    raise Unencodable(vr)


class RowEncoder:
    """Encodes result rows of one query: the per-element work done once, not once per row.

    `columns` are (tag, VR, kind) in row order, kind as in `edge.query` ("list": a
    `\\`-joined string, "int": an integer or None, else text); `constants` are elements every
    response carries (QueryRetrieveLevel, the requested keys returned empty). The output is
    `encode_identifier` of the same elements (tested), Specific Character Set ISO_IR 192
    included only for a row with a non-ASCII value. Raises Unencodable at construction for an
    element it cannot encode; per row only for a value out of range.
    """

    def __init__(
        self, columns: Sequence[tuple[int, str, str]], constants: Iterable[Element], explicit: bool
    ) -> None:
        for _tag, vr, _kind in columns:
            if vr not in _TEXT_VRS and vr != "US":
                raise Unencodable(vr)
        self.explicit = explicit
        # (tag, column index or -1, VR, kind, pre-encoded constant element)
        items: list[tuple[int, int, str, str, bytes]] = [
            (tag, i, vr, kind, b"") for i, (tag, vr, kind) in enumerate(columns)
        ]
        for tag, vr, value in constants:
            if vr == "SQ" and value:
                raise Unencodable("SQ")
            data = _value(vr, value, False)
            items.append((tag, -1, vr, "", _header(tag, vr, explicit, len(data)) + data))
        items.sort(key=lambda e: e[0])
        self._items = items
        self._charset = encode_identifier(
            [(_SPECIFIC_CHARACTER_SET, "CS", "ISO_IR 192")], explicit, False
        )
        self._charset_at = next(
            (n for n, e in enumerate(items) if e[0] > _SPECIFIC_CHARACTER_SET), len(items)
        )

    def encode(self, row: Sequence[Any]) -> bytes:
        utf8 = any(isinstance(v, str) and not v.isascii() for v in row)
        parts: list[bytes] = []
        explicit = self.explicit
        for n, (tag, col, vr, kind, const) in enumerate(self._items):
            if utf8 and n == self._charset_at:
                parts.append(self._charset)
            if col < 0:
                parts.append(const)
                continue
            value = row[col]
            if kind == "list":
                value = [v for v in (value or "").split("\\") if v]
            elif kind == "int":
                value = None if value is None or value == "" else int(value)
            elif value is None:
                value = ""
            data = _value(vr, value, utf8)
            parts.append(_header(tag, vr, explicit, len(data)))
            parts.append(data)
        if utf8 and self._charset_at == len(self._items):
            parts.append(self._charset)
        return b"".join(parts)


_SPECIFIC_CHARACTER_SET = 0x00080005


def _cmd(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, elem, len(value)) + value


def encode_find_rsp(message_id: int, sop_class: str, status: int, has_identifier: bool) -> bytes:
    """A C-FIND-RSP command set without optional elements (implicit VR LE, PS3.7 9.3.2.2)."""
    uid = sop_class.encode("ascii")
    body = (
        _cmd(0x0002, uid + b"\0" if len(uid) % 2 else uid)
        + _cmd(0x0100, struct.pack("<H", C_FIND_RSP))
        + _cmd(0x0120, struct.pack("<H", message_id))
        + _cmd(0x0800, struct.pack("<H", _HAS_DATASET if has_identifier else _NO_DATASET))
        + _cmd(0x0900, struct.pack("<H", status))
    )
    return _cmd(0x0000, struct.pack("<I", len(body))) + body


def pdvs(context_id: int, command: bytes, dataset: bytes, max_pdu: int) -> list[bytes]:
    """The message as PDV items (control header + fragment), split like pynetdicom's encode_msg."""
    out: list[bytes] = []
    for data, more, last in ((command, 0x01, 0x03), (dataset, 0x00, 0x02)):
        if not data and more == 0x00:
            break
        frag = max_pdu - 6 if max_pdu else max(len(data), 1)
        view = memoryview(data)
        for start in range(0, max(len(data), 1), frag):
            chunk = bytes(view[start : start + frag])
            out.append(bytes((more if start + frag < len(data) else last,)) + chunk)
    return out


def frame(context_id: int, items: Sequence[bytes]) -> bytes:
    """P-DATA-TF PDUs, one PDV each (PS3.8 9.3.5)."""
    return b"".join(
        struct.pack(">BBIIB", 0x04, 0, len(pdv) + 5, len(pdv) + 1, context_id) + pdv
        for pdv in items
    )


def dataset_bytes(ds: Dataset, transfer_syntax: str) -> bytes:
    """pydicom's encoding of a response identifier (the path for what we do not encode)."""
    from pydicom.uid import UID

    ts = UID(transfer_syntax)
    out = pydicom_encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    if not out:
        raise ValueError("identifier could not be encoded")
    return out


def as_dataset(elements: Iterable[Element]) -> Dataset:
    ds = Dataset()
    for tag, vr, value in elements:
        ds[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    return ds


class Wire:
    """Writes framed C-FIND responses for one association.

    Directly on the socket when it is a plain TCP socket served by our reactor and no
    per-message event handlers are bound; otherwise as P-DATA primitives through the DUL
    thread (TLS: the DUL thread may be reading the same SSL object). Direct writes and the
    DUL's own sends share one lock, so PDUs never interleave. P-DATA does not change the
    association's state (Sta6), so pynetdicom's state machine is unaffected.
    """

    def __init__(self, assoc: Association, context_id: int) -> None:
        self.assoc = assoc
        self.context_id = context_id
        self.max_pdu = int(assoc.dimse.maximum_pdu_size or 0)
        self._lock = _install_send_lock(assoc)
        self._buf: list[bytes] = []
        self._size = 0

    @property
    def direct(self) -> bool:
        return self._lock is not None

    def message(self, command: bytes, dataset: bytes) -> None:
        items = pdvs(self.context_id, command, dataset, self.max_pdu)
        if self._lock is None:
            for pdv in items:
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((self.context_id, pdv))
                self.assoc.dul.send_pdu(pdata)
            return
        data = frame(self.context_id, items)
        self._buf.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._buf or self._lock is None:
            return
        data, self._buf, self._size = b"".join(self._buf), [], 0
        wrapper = self.assoc.dul.socket
        if wrapper is None or wrapper.socket is None:
            return
        with self._lock:
            try:
                wrapper.socket.sendall(data)
            except OSError:
                wrapper.event_queue.put("Evt17")  # what pynetdicom's send does on failure
                return
        self.assoc.dul._idle_timer.restart()  # type: ignore[attr-defined]


_EVENTS = (evt.EVT_DIMSE_SENT, evt.EVT_PDU_SENT, evt.EVT_DATA_SENT)


def _install_send_lock(assoc: Association) -> threading.Lock | None:
    """A lock shared by our direct writes and the DUL's socket sends; None: no direct path."""
    lock = getattr(assoc, "hpacs_send_lock", None)
    if lock is not None:
        return lock  # type: ignore[no-any-return]
    wrapper = assoc.dul.socket
    sock = wrapper.socket if wrapper is not None else None
    if (
        not reactor.ENABLED
        or wrapper is None
        or sock is None
        or type(sock).__name__ != "socket"
        or any(assoc.get_handlers(e) for e in _EVENTS)
    ):
        return None
    lock = threading.Lock()
    send = wrapper.send

    def locked_send(bytestream: bytes) -> None:
        with lock:
            send(bytestream)

    wrapper.send = locked_send  # type: ignore[method-assign]
    assoc.hpacs_send_lock = lock  # type: ignore[attr-defined]
    return lock


def install_fast_final(assoc: Association, wire_for: Callable[[int], Wire]) -> None:
    """Final (no identifier) C-FIND-RSPs framed by us too, after the pending ones we wrote.

    pynetdicom sends the final status itself once the handler's generator ends; this wraps
    `dimse.send_msg` (like edge/retrieve.py does for pending C-MOVE responses) so that
    message skips pydicom as well. Anything with optional elements takes pynetdicom's path.
    """
    if getattr(assoc, "hpacs_fast_find", False):
        return
    slow = assoc.dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if (
            type(primitive) is C_FIND
            and primitive.Identifier is None
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.AffectedSOPClassUID is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and isinstance(primitive.Status, int)
        ):
            wire = wire_for(context_id)
            if wire.direct:
                command = encode_find_rsp(
                    primitive.MessageIDBeingRespondedTo,
                    str(primitive.AffectedSOPClassUID),
                    primitive.Status,
                    False,
                )
                wire.message(command, b"")
                wire.flush()
                return
        slow(primitive, context_id)

    assoc.dimse.send_msg = send_msg  # type: ignore[method-assign]
    assoc.hpacs_fast_find = True  # type: ignore[attr-defined]
