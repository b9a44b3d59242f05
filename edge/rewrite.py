"""New bytes for a corrected instance: only the changed top-level elements differ.

The attributes a correction may change (edge/correctable.py) are top-level elements of groups
0008, 0010 and 0020, all before the Pixel Data. So the rewrite reads the head of the file up
to the first element past the last tag it changes, splices new element bytes into it (an
element replaced in place, a missing one inserted in tag order, a group length element of a
touched group corrected) and copies everything after that point as it is: the preamble and
File Meta (transfer syntax included), every other element, and the Pixel Data, native or
encapsulated, are the original bytes. Memory is the head only, whatever the object's size.

New values are encoded in the object's Specific Character Set when it can hold them
(default repertoire: ASCII; one stand-alone character set: its codec, strictly; ISO 2022 code
extensions: ASCII only). When it cannot, the object is switched to ISO_IR 192 (UTF-8), which
means re-encoding every text element of the dataset, nested ones included: that path goes
through pydicom (the whole object read, every text value decoded in the old character set,
written in UTF-8; Pixel Data bytes are still copied, never recompressed), as does a deflated
transfer syntax (its dataset is one compressed stream). The preamble and File Meta bytes are
kept there too.

Pure: bytes in, bytes out, no index, no cache (edge/corrections.py does the I/O).
"""

from __future__ import annotations

import io
import shutil
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import pydicom
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword

from shared import acceptance
from shared.errors import InvalidDataset

CHARSET_TAG = 0x00080005
UTF8 = "ISO_IR 192"
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TS_TAG = 0x00020010
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024 * 1024  # groups 0008-0020 larger than this are not a real object
# Character sets whose whole repertoire one Python codec encodes (no code extensions).
_STAND_ALONE = frozenset(
    {"ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 126", "ISO_IR 127",
     "ISO_IR 138", "ISO_IR 144", "ISO_IR 148", "ISO_IR 166", "ISO_IR 192", "GB18030", "GBK"}
)  # fmt: skip


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _NeedMore(Exception):
    """The walk needs bytes beyond the head read so far."""


@dataclass(frozen=True)
class _Element:
    tag: int
    start: int  # first byte of the element header
    value_start: int
    end: int  # one past the value


@dataclass(frozen=True)
class _Layout:
    dataset_offset: int
    transfer_syntax: str
    implicit: bool
    little: bool


def tags_of(changes: Mapping[str, str]) -> dict[int, str]:
    """Keyword -> value to tag -> value (keywords checked by edge/correctable.py)."""
    out = {}
    for keyword, value in changes.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"unknown attribute {keyword!r}")
        out[tag] = value
    return out


def rewrite(src: Readable, out: BinaryIO, changes: Mapping[str, str]) -> bool:
    """Write `src` (a Part-10 object) to `out` with `changes` (keyword -> new value) applied.

    Returns False, writing nothing, when the object already holds every new value (a re-run
    of a correction). The caller reads `src` to its end through us, so a verifying reader
    sees every byte."""
    want = tags_of(changes)
    head = bytearray()
    exhausted = False
    while True:
        try:
            plan = _plan(bytes(head), exhausted, want)
            break
        except _NeedMore:
            if exhausted or len(head) > _MAX_HEAD:
                raise InvalidDataset("the object ends inside its header elements") from None
            chunk = src.read(max(_CHUNK, len(head)))
            exhausted = not chunk
            head += chunk
    if plan is None:  # deflated, or the character set cannot hold a new value
        data = bytes(head) + src.read()
        new = _rewrite_with_pydicom(data, want)
        if new is None:
            return False
        out.write(new)
        return True
    layout, boundary, new_dataset_head = plan
    if new_dataset_head is None:
        shutil.copyfileobj(src, io.BytesIO())  # read to the end: the caller verifies it all
        return False
    out.write(head[: layout.dataset_offset])
    out.write(new_dataset_head)
    out.write(head[boundary:])
    shutil.copyfileobj(src, out, 1024 * 1024)
    return True


# ---- the splice -------------------------------------------------------------------------------
def _plan(
    head: bytes, exhausted: bool, want: dict[int, str]
) -> tuple[_Layout, int, bytes | None] | None:
    """(layout, where the copied tail starts, the new dataset head or None if unchanged);
    None when the splice cannot be used (deflated, or a character set switch)."""
    layout = _layout(head, exhausted)
    if layout.transfer_syntax == acceptance.DEFLATED_LE:
        return None
    last = max(max(want), CHARSET_TAG)
    elements, boundary = _walk(head, exhausted, layout, last)
    found = {e.tag: e for e in elements}
    charset = _charset(head, found.get(CHARSET_TAG))
    encoded: dict[int, bytes] = {}
    for tag, value in want.items():
        raw = _encode(value, charset, str(dictionary_VR(tag)))
        if raw is None:
            return None  # the character set cannot hold it: switch to UTF-8
        encoded[tag] = raw
    if all(_same(head, found.get(t), raw) for t, raw in encoded.items()):
        return layout, boundary, None
    return layout, boundary, _splice(head, layout, elements, encoded)


def _layout(head: bytes, exhausted: bool) -> _Layout:
    if len(head) < 132:
        _more(exhausted)
    if head[128:132] != b"DICM":
        raise InvalidDataset("not a Part-10 object (no DICM prefix)")
    pos, syntax = 132, ""
    while True:
        if pos + 8 > len(head):
            _more(exhausted)
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                _more(exhausted)
            length, hdr = struct.unpack_from("<L", head, pos + 8)[0], 12
        else:
            length, hdr = struct.unpack_from("<H", head, pos + 6)[0], 8
        end = pos + hdr + length
        if end > len(head):
            _more(exhausted)
        if (group << 16 | elem) == _TS_TAG:
            syntax = head[pos + hdr : end].rstrip(b"\0 ").decode("ascii", "replace")
        pos = end
    if not syntax:
        raise InvalidDataset("the File Meta has no Transfer Syntax UID")
    return _Layout(pos, syntax, syntax == acceptance.IMPLICIT_LE, syntax != acceptance.EXPLICIT_BE)


def _more(exhausted: bool) -> None:
    if exhausted:
        raise InvalidDataset("the object ends inside an element header")
    raise _NeedMore


class _Reader:
    """Element headers of one dataset encoding over the head bytes."""

    def __init__(self, head: bytes, exhausted: bool, layout: _Layout) -> None:
        self.head, self.exhausted, self.layout = head, exhausted, layout
        self.e = "<" if layout.little else ">"

    def need(self, end: int) -> None:
        if end > len(self.head):
            _more(self.exhausted)

    def tag(self, pos: int) -> int:
        self.need(pos + 4)
        g, el = struct.unpack_from(self.e + "HH", self.head, pos)
        return int(g << 16 | el)

    def element(self, pos: int) -> tuple[int, int, int]:
        """(tag, value start, length) of the element at `pos`."""
        tag = self.tag(pos)
        if tag in (_ITEM, _ITEM_END, _SEQ_END) or self.layout.implicit:
            self.need(pos + 8)
            return tag, pos + 8, struct.unpack_from(self.e + "L", self.head, pos + 4)[0]
        self.need(pos + 8)
        vr = self.head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            self.need(pos + 12)
            return tag, pos + 12, struct.unpack_from(self.e + "L", self.head, pos + 8)[0]
        return tag, pos + 8, struct.unpack_from(self.e + "H", self.head, pos + 6)[0]

    def skip_undefined(self, pos: int, depth: int = 0) -> int:
        """One past the sequence delimiter of an undefined-length value starting at `pos`."""
        if depth > acceptance.MAX_SEQUENCE_DEPTH:
            raise InvalidDataset("sequences nested too deeply")
        while True:
            tag, start, length = self.element(pos)
            if tag == _SEQ_END:
                return start
            if tag != _ITEM:
                raise InvalidDataset(f"unexpected element in a sequence at offset {pos}")
            if length != _UNDEFINED:
                pos = start + length
                continue
            pos = start
            while True:  # an undefined-length item: its elements up to the item delimiter
                tag, start, length = self.element(pos)
                if tag == _ITEM_END:
                    pos = start
                    break
                pos = (
                    self.skip_undefined(start, depth + 1)
                    if length == _UNDEFINED
                    else start + length
                )


def _walk(head: bytes, exhausted: bool, layout: _Layout, last: int) -> tuple[list[_Element], int]:
    """Top-level elements up to tag `last`, and the offset of the first one after it."""
    r = _Reader(head, exhausted, layout)
    pos, out = layout.dataset_offset, list[_Element]()
    while True:
        if pos >= len(head) and exhausted:
            return out, pos  # the dataset ends before `last`
        tag = r.tag(pos)
        if tag > last:
            return out, pos
        tag, start, length = r.element(pos)
        end = r.skip_undefined(start) if length == _UNDEFINED else start + length
        r.need(end)
        out.append(_Element(tag, pos, start, end))
        pos = end


def _charset(head: bytes, elem: _Element | None) -> list[str]:
    if elem is None:
        return []
    raw = head[elem.value_start : elem.end].decode("ascii", "replace")
    return [t.strip() for t in raw.split("\\")]


def _encode(value: str, charset: list[str], vr: str) -> bytes | None:
    """The padded value bytes in the object's character set; None if it cannot hold them."""
    terms = [t for t in charset if t] or [""]
    try:
        if len(terms) == 1 and terms[0] in _STAND_ALONE:
            raw = value.encode(python_encoding[terms[0]])
        else:
            raw = value.encode("ascii")  # the default repertoire, or ISO 2022's G0 default
    except UnicodeEncodeError:
        return None
    del vr  # every correctable VR pads with a space
    return raw + b" " if len(raw) % 2 else raw


def _same(head: bytes, elem: _Element | None, raw: bytes) -> bool:
    if elem is None:
        return raw == b""  # absent and empty answer alike
    return head[elem.value_start : elem.end].rstrip(b" \0") == raw.rstrip(b" \0")


def _element_bytes(tag: int, vr: str, raw: bytes, layout: _Layout) -> bytes:
    e = "<" if layout.little else ">"
    if layout.implicit:
        return struct.pack(e + "HHL", tag >> 16, tag & 0xFFFF, len(raw)) + raw
    return struct.pack(e + "HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw


def _splice(
    head: bytes,
    layout: _Layout,
    elements: list[_Element],
    encoded: dict[int, bytes],
) -> bytes:
    pieces: list[tuple[int, bytes]] = []  # (tag, element bytes) in tag order
    delta: dict[int, int] = {}  # group -> change of its byte size
    todo = dict(sorted(encoded.items()))

    def put(tag: int, old_size: int) -> None:
        data = _element_bytes(tag, str(dictionary_VR(tag)), todo.pop(tag), layout)
        delta[tag >> 16] = delta.get(tag >> 16, 0) + len(data) - old_size
        pieces.append((tag, data))

    for el in elements:
        for tag in [t for t in todo if t < el.tag]:
            put(tag, 0)
        if el.tag in todo:
            put(el.tag, el.end - el.start)
        else:
            pieces.append((el.tag, head[el.start : el.end]))
    for tag in list(todo):
        put(tag, 0)
    e = "<" if layout.little else ">"
    out = []
    for tag, data in pieces:
        if tag & 0xFFFF == 0 and delta.get(tag >> 16) and len(data) >= 4:
            # a (gggg,0000) group length of a group whose size changed
            old = struct.unpack(e + "L", data[-4:])[0]
            data = data[:-4] + struct.pack(e + "L", old + delta[tag >> 16])
        out.append(data)
    return b"".join(out)


# ---- the character set switch (and deflated objects): through pydicom -----------------------
def _rewrite_with_pydicom(data: bytes, want: dict[int, str]) -> bytes | None:
    accepted = acceptance.check_buffer(data, len(data))
    ds = pydicom.dcmread(io.BytesIO(data))
    if all(_text_value(ds, tag) == value.rstrip(" ") for tag, value in want.items()):
        return None
    ds.decode()  # every text value decoded in the old character set, nested ones too
    if _needs_utf8(ds, want):
        ds.SpecificCharacterSet = UTF8  # pydicom writes every text value in it again
    for tag, value in want.items():
        vr = str(dictionary_VR(tag))
        ds.add_new(tag, vr, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    written = buf.getvalue()
    new_accepted = acceptance.check_buffer(written, len(written))
    return data[: accepted.dataset_offset] + written[new_accepted.dataset_offset :]


def _text_value(ds: pydicom.Dataset, tag: int) -> str:
    elem = ds.get(tag)
    if elem is None or elem.value is None:
        return ""
    return str(elem.value).rstrip(" ")


def _needs_utf8(ds: pydicom.Dataset, want: dict[int, str]) -> bool:
    charset = ds.get(CHARSET_TAG)
    terms = [] if charset is None else list(charset.value if charset.VM > 1 else [charset.value])
    return any(_encode(v, [str(t) for t in terms], "") is None for v in want.values())
