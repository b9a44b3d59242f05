"""C-FIND response identifiers encoded directly from index rows (pure, no I/O).

Why: pydicom spends about a millisecond building and encoding a Dataset per pending response,
while our SQL and row mapping take well under 0.1 ms per match. Here the identifier is encoded
once from (tag, VR, value) triples, with the per-element work done once per query
(`RowEncoder`); the bytes are pydicom's own (tests/test_find_wire.py compares every row of a
test index at each level). Anything the encoder does not handle (a VR it does not know, a
transfer syntax other than implicit/explicit VR little endian) raises `Unencodable`, and the
caller uses pydicom for that identifier. Framing and writing are the engine's
(edge/dimse/engine.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from edge.dimse import dataset as message_dataset

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
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


def dataset_bytes(ds: Dataset, transfer_syntax: str) -> bytes:
    """pydicom's encoding of a response identifier (the path for what we do not encode)."""
    return message_dataset.encode(ds, transfer_syntax)


def as_dataset(elements: Iterable[Element]) -> Dataset:
    ds = Dataset()
    for tag, vr, value in elements:
        ds[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    return ds
