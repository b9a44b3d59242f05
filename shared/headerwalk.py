"""The indexed attributes of a Part-10 file without pydicom, for the common case.

Why: pydicom's `dcmread(stop_before_pixels=True)` costs ~0.5 ms per small instance (file meta
and dataset parsing into Dataset objects, tag comparisons), about a third of the edge's CPU per
received 10 KB image, while the index needs ~25 short elements. This walker reads the first
64 KiB once, checks the element framing as it goes (every length inside what was read), and
takes the raw bytes of the elements the index needs.

It checks the framing of every element up to the Pixel Data, as pydicom's `stop_before_pixels`
read does, so an unclosed undefined-length sequence or a length past the end of the file still
reaches pydicom and is refused there. It answers only when the answer is certain to equal
pydicom's (`shared.dicom.read_header` compares, tests/test_header_walk.py checks on pydicom's
own test files): Implicit or Explicit VR Little Endian, tags in ascending order, an ASCII-
compatible Specific Character Set, each wanted value plain ASCII text (or a 2-byte US).
Anything else (another transfer syntax, a non-ASCII name, a multi-valued element, an element it
cannot frame) returns None, and the caller takes pydicom's path, which also produces the errors
for malformed files.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

HEAD_BYTES = 64 * 1024
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
PIXEL_DATA = 0x7FE00010
_LONG = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV")
)
_SHORT = frozenset(
    (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT")
) | frozenset((b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"))
_ELEM = struct.Struct("<HHI")
_EXPL = struct.Struct("<HH2sH")
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class _Unsure(Exception):
    """The walker cannot be certain: the caller uses pydicom."""


def _next(buf: bytes, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR or b"", value offset, value length) of the element at pos."""
    if pos + 8 > len(buf):
        raise _Unsure
    if not explicit:
        group, elem, length = _ELEM.unpack_from(buf, pos)
        return (group << 16) | elem, b"", pos + 8, length
    group, elem, vr, short = _EXPL.unpack_from(buf, pos)
    tag = (group << 16) | elem
    if group == 0xFFFE:  # items and delimiters carry no VR
        return tag, b"", pos + 8, _ELEM.unpack_from(buf, pos)[2]
    if vr in _LONG:
        if pos + 12 > len(buf):
            raise _Unsure
        return tag, vr, pos + 12, struct.unpack_from("<I", buf, pos + 8)[0]
    if vr in _SHORT:
        return tag, vr, pos + 8, short
    raise _Unsure  # an unknown VR: pydicom decides what it means


def _skip_undefined(buf: bytes, pos: int, explicit: bool, depth: int) -> int:
    """Past an undefined-length sequence or item list, to after its delimiter."""
    if depth > 16:
        raise _Unsure
    while True:
        tag, vr, start, length = _next(buf, pos, explicit)
        if tag == _SEQ_END:
            return start
        if tag != _ITEM:
            raise _Unsure
        if length != _UNDEFINED:
            pos = start + length
            continue
        pos = start
        while True:  # an undefined-length item: its elements up to the item delimiter
            tag, vr, start, length = _next(buf, pos, explicit)
            if tag == _ITEM_END:
                pos = start
                break
            pos = _skip_value(buf, start, length, vr, explicit, depth + 1)


def _skip_value(buf: bytes, start: int, length: int, vr: bytes, explicit: bool, depth: int) -> int:
    if length == _UNDEFINED:
        if explicit and vr != b"SQ":
            raise _Unsure  # UN/OB with undefined length: encodings we leave to pydicom
        return _skip_undefined(buf, start, explicit, depth)
    end = start + length
    if end > len(buf):
        raise _Unsure
    return end


def walk(
    head: bytes, explicit: bool, pos: int, file_size: int, wanted: frozenset[int]
) -> dict[int, tuple[bytes, bytes]]:
    """{tag: (VR, raw value)} of the wanted top-level elements; the framing of every element up
    to the Pixel Data (or the end of the file) is checked on the way; raises _Unsure."""
    found: dict[int, tuple[bytes, bytes]] = {}
    last = -1
    n = len(head)
    complete = file_size <= n
    expl, elem = _EXPL.unpack_from, _ELEM.unpack_from
    while pos < n:
        if pos + 8 > n:
            raise _Unsure
        if explicit:
            group, el, vr, length = expl(head, pos)
            start = pos + 8
            if vr in _LONG:
                start = pos + 12
                length = int.from_bytes(head[pos + 8 : start], "little")
            elif vr not in _SHORT:
                raise _Unsure  # an unknown VR (or items at the top level)
        else:
            group, el, length = elem(head, pos)
            vr, start = b"", pos + 8
        tag = (group << 16) | el
        if tag <= last or group == 0xFFFE:
            raise _Unsure  # out of order, or a delimiter at the top level
        if tag == PIXEL_DATA:
            if length != _UNDEFINED and start + length > file_size:
                raise _Unsure  # declared longer than the file: pydicom's path decides
            return found
        last = tag
        if tag in wanted:
            if length == _UNDEFINED or start + length > n:
                raise _Unsure
            found[tag] = (vr, head[start : start + length])
            pos = start + length
            continue
        pos = _skip_value(head, start, length, vr, explicit, 0)
    if pos != n or not complete:
        raise _Unsure  # ran past what we read, or an element overruns the file
    return found


def file_meta(head: bytes) -> tuple[int, str] | None:
    """(dataset offset, Transfer Syntax UID) after the preamble, DICM and the File Meta group."""
    if len(head) < 144 or head[128:132] != b"DICM":
        return None
    pos, ts = 132, None
    while pos + 8 <= len(head) and head[pos : pos + 2] == b"\x02\x00":
        tag, _vr, start, length = _next(head, pos, True)
        if length == _UNDEFINED or start + length > len(head):
            return None
        if tag == 0x00020010:
            ts = head[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    return (pos, ts) if ts else None


def raw_elements(
    fh: BinaryIO, file_size: int, wanted: frozenset[int]
) -> tuple[str, dict[int, tuple[bytes, bytes]]] | None:
    """(transfer syntax, wanted raw elements) when certain, else None."""
    head = fh.read(HEAD_BYTES)
    meta = file_meta(head)
    if meta is None:
        return None
    pos, ts = meta
    if ts not in (IMPLICIT_LE, EXPLICIT_LE):
        return None
    try:
        return ts, walk(head, ts == EXPLICIT_LE, pos, file_size, wanted)
    except (_Unsure, struct.error):
        return None
