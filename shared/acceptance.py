"""One acceptance rule for every door: C-STORE, STOW (edge and cloud), hot folder, import.

A dataset is accepted only if it parses to its end: every element's declared length lies inside
the object, undefined-length sequences and items are closed, native Pixel Data has exactly the
length its image attributes give, and encapsulated Pixel Data is a well-formed run of fragment
items. Anything else raises `InvalidDataset` with a reason naming the tag and the offset,
never a value (no PHI).

It runs on the ingest hot path, so it only walks element headers with `struct`: no value is
decoded except the handful it checks (Rows, Columns, Samples per Pixel, Bits Allocated, Number
of Frames, Photometric Interpretation, and the SOP Class/Instance UIDs at the top level).
Objects up to 1 MiB are read with one `pread`; larger ones are mapped (`mmap`, see
shared/mapped.py), so a 1 GB object only ever has its element headers paged in.

Transfer syntaxes:
- Implicit VR LE, Explicit VR LE, Explicit VR BE: scanned in place. In implicit VR an element is
  a sequence when it has undefined length or the data dictionary says SQ.
- Deflated Explicit VR LE: inflated as a stream into an anonymous temp file (refused beyond
  `shared.mapped.MAX_INFLATED_BYTES`), then scanned like explicit VR LE.
- Every other syntax (JPEG, JPEG-LS, JPEG 2000, RLE, unknown): explicit VR LE with encapsulated
  Pixel Data (undefined length, Basic Offset Table item first, fragments, sequence delimiter).

Layouts: a Part-10 file (preamble, `DICM`, File Meta) or a bare dataset, which dicomweb-client
and in-memory writers send: the File Meta group without preamble, or no File Meta at all
(implicit or explicit VR LE, told apart by whether the first element carries a VR, as pydicom
does). Bare datasets are accepted on every door; `write_part10` gives them a preamble and a
File Meta, so only Part-10 objects are ever stored.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.datadict import DicomDictionary, keyword_for_tag

from shared.errors import InvalidDataset
from shared.mapped import buffer, inflated
from shared.uids import is_valid_uid

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
NATIVE_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE})

MAX_SEQUENCE_DEPTH = 64  # real objects nest a handful of levels; SR trees a few dozen at most

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018
_SAMPLES, _PHOTOMETRIC, _FRAMES = 0x00280002, 0x00280004, 0x00280008
_ROWS, _COLUMNS, _BITS = 0x00280010, 0x00280011, 0x00280100
_US_TAGS = frozenset({_SAMPLES, _ROWS, _COLUMNS, _BITS})
_WATCHED = _US_TAGS | {_PHOTOMETRIC, _FRAMES, _SOP_CLASS, _SOP_INSTANCE}
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
     b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)  # fmt: skip
_VRS = _LONG_VRS | _SHORT_VRS
_SQ_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")

_DS, _SQ = 0, 1  # stack frame kinds: a dataset (top level or item), a sequence


@dataclass(frozen=True)
class Accepted:
    """What the scan learnt: enough to store the object without parsing it again."""

    transfer_syntax: str
    part10: bool  # preamble and `DICM` present
    dataset_offset: int  # first byte of the dataset (after the File Meta, if any)
    size: int
    sop_class_uid: str  # from the dataset's top level ("" when absent)
    sop_instance_uid: str
    # {tag: (VR or b"" in implicit VR, raw value)} of the top-level elements the caller asked
    # for (`collect`), taken on the same pass; None when not asked, or when the top level is
    # not in ascending tag order or a wanted tag is a sequence or of undefined length (then
    # what a reader such as pydicom makes of the header is not certain to be these bytes).
    elements: dict[int, tuple[bytes, bytes]] | None = None


def check(source: str | os.PathLike[str] | BinaryIO, collect: Collection[int] = ()) -> Accepted:
    """Accept a Part-10 file or a bare dataset (a path or a binary file object), or raise
    `InvalidDataset` with the reason."""
    with buffer(source) as (buf, size):
        return check_buffer(buf, size, collect)


def check_buffer(buf: Any, size: int, collect: Collection[int] = ()) -> Accepted:
    """The rule over a buffer (bytes, mmap): see the module docstring. `collect`: top-level
    tags whose raw elements to hand back (`Accepted.elements`), for the header the index
    needs, so the object is walked once (shared/intake.py)."""
    if size < 8:
        raise InvalidDataset(f"object of {size} bytes is too short to hold a DICOM element")
    if size >= 132 and buf[128:132] == b"DICM":
        part10, ts, start = True, *_file_meta(buf, size, 132)
    elif buf[0:2] == b"\x02\x00" and bytes(buf[4:6]) in _VRS:
        part10, ts, start = False, *_file_meta(buf, size, 0)
    else:  # a bare dataset without File Meta: the first element tells its encoding
        part10, start = False, 0
        ts = _bare_syntax(buf)
    if start >= size:
        raise InvalidDataset("the object holds a File Meta but no dataset")
    if ts == DEFLATED_LE:
        with inflated(buf, start, size) as (plain, plain_size):
            scan = _Scan(plain, plain_size, ts, collect)
            top = scan.run(0)
    else:
        scan = _Scan(buf, size, ts, collect)
        top = scan.run(start)
    return Accepted(ts, part10, start, size, *top, scan.collected())


def _bare_syntax(buf: Any) -> str:
    """Implicit or explicit VR by whether a VR follows the first tag; big endian when the
    first group reads small that way (pydicom's heuristic)."""
    if bytes(buf[4:6]) not in _VRS:
        return IMPLICIT_LE
    return EXPLICIT_BE if buf[0] == 0 and buf[1] != 0 else EXPLICIT_LE


def write_part10(src: str | os.PathLike[str], accepted: Accepted, out: BinaryIO) -> None:
    """Write a bare dataset as a Part-10 object: preamble, File Meta, the dataset bytes as
    they are (never re-encoded)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID

    if not (accepted.sop_class_uid and accepted.sop_instance_uid):
        raise InvalidDataset("a dataset without preamble lacks its SOP Class or Instance UID")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(accepted.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(accepted.sop_instance_uid)
    meta.TransferSyntaxUID = UID(accepted.transfer_syntax)
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    with open(src, "rb") as inp:
        inp.seek(accepted.dataset_offset)
        while chunk := inp.read(1 << 20):
            out.write(chunk)


def rewrite_as_part10(path: str | os.PathLike[str], accepted: Accepted) -> Accepted:
    """Replace a bare dataset file by its Part-10 form (same directory, atomic rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=".part10-")
    try:
        with os.fdopen(fd, "wb") as out:
            write_part10(path, accepted, out)
            offset = out.tell() - (accepted.size - accepted.dataset_offset)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return replace(accepted, part10=True, dataset_offset=offset, size=path.stat().st_size)


# ---- the scan ---------------------------------------------------------------------------------


def _name(tag: int) -> str:
    kw = keyword_for_tag(tag) if tag >> 16 != 0xFFFE else ""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})" + (f" {kw}" if kw else "")


def _file_meta(buf: Any, size: int, pos: int) -> tuple[str, int]:
    """Walk the File Meta group (always explicit VR LE); returns (transfer syntax, its end)."""
    ts = None
    while pos + 8 <= size and buf[pos : pos + 2] == b"\x02\x00":
        group, elem, vr, length = struct.unpack_from("<HH2sH", buf, pos)
        tag = group << 16 | elem
        if vr in _LONG_VRS:
            if pos + 12 > size:
                break
            (length,) = struct.unpack_from("<I", buf, pos + 8)
            header = 12
        elif vr in _SHORT_VRS:
            header = 8
        else:
            raise InvalidDataset(f"File Meta element {_name(tag)} has an invalid VR at {pos}")
        end = pos + header + length
        if length == _UNDEFINED or end > size:
            raise InvalidDataset(
                f"File Meta element {_name(tag)} at offset {pos} declares {length} bytes, "
                f"only {size - pos - header} remain"
            )
        if tag == 0x00020010:
            ts = bytes(buf[pos + header : end]).rstrip(b"\0 ").decode("ascii", "replace")
        pos = end
    if not ts:
        raise InvalidDataset("the File Meta has no Transfer Syntax UID")
    if not is_valid_uid(ts):
        raise InvalidDataset(f"the File Meta's Transfer Syntax UID is not a UID: {ts[:80]!r}")
    return ts, pos


class _Scan:
    """One pass over element headers with an explicit stack (no recursion, bounded depth)."""

    def __init__(self, buf: Any, size: int, ts: str, collect: Collection[int] = ()) -> None:
        self.buf, self.size = buf, size
        self.collect = collect
        self.found: dict[int, tuple[bytes, bytes]] = {}
        self.last_top = -1  # the previous top-level tag: ascending order is checked
        self.certain = True
        self.native = ts in NATIVE_SYNTAXES
        order = ">" if ts == EXPLICIT_BE else "<"
        self.implicit = ts == IMPLICIT_LE
        self.explicit_header = struct.Struct(order + "HH2sH")
        self.plain_header = struct.Struct(order + "HHI")  # implicit elements, items, delimiters
        self.u32 = struct.Struct(order + "I")
        self.u16 = struct.Struct(order + "H")
        self.uids = ["", ""]
        self.start = 0

    def fail(self, reason: str) -> InvalidDataset:
        return InvalidDataset(reason)

    def collected(self) -> dict[int, tuple[bytes, bytes]] | None:
        return self.found if self.collect and self.certain else None

    def top_element(self, tag: int, vr: bytes | None, start: int, length: int) -> None:
        """Order and wanted values of the top level (only when the caller collects)."""
        if tag <= self.last_top:
            self.certain = False
        self.last_top = tag
        if tag in self.collect:
            if length == _UNDEFINED or vr == b"SQ" or (vr is None and tag in _SQ_TAGS):
                self.certain = False
            else:
                self.found[tag] = (vr or b"", bytes(self.buf[start : start + length]))

    def run(self, pos: int) -> tuple[str, str]:
        """Walk from `pos` to the end; returns the top-level (SOP Class, SOP Instance) UIDs."""
        self.start = pos
        # frames: [kind, end (None = undefined length), limit, implicit, attributes]
        stack: list[list[Any]] = [[_DS, self.size, self.size, self.implicit, {}]]
        while stack:
            frame = stack[-1]
            if frame[1] == pos:
                stack.pop()
            elif frame[0] == _DS:
                pos = self.element(pos, frame, stack)
            else:
                pos = self.item(pos, frame, stack)
        return self.uids[0], self.uids[1]

    def item(self, pos: int, seq: list[Any], stack: list[list[Any]]) -> int:
        limit = seq[2]
        if pos + 8 > limit:
            if seq[1] is None:
                raise self.fail(f"sequence not closed: no sequence delimiter before offset {limit}")
            raise self.fail(f"sequence items overrun their sequence at offset {pos}")
        group, elem, length = self.plain_header.unpack_from(self.buf, pos)
        tag = group << 16 | elem
        if tag == _SEQ_END and seq[1] is None:
            if length:
                raise self.fail(f"sequence delimiter at offset {pos} has length {length}")
            stack.pop()
            return pos + 8
        if tag != _ITEM:
            raise self.fail(f"{_name(tag)} at offset {pos} where a sequence item was expected")
        if length == _UNDEFINED:
            stack.append([_DS, None, limit, seq[3], {}])
        else:
            end = pos + 8 + length
            if end > limit:
                raise self.fail(
                    f"sequence item at offset {pos} declares {length} bytes, "
                    f"only {limit - pos - 8} remain"
                )
            stack.append([_DS, end, end, seq[3], {}])
        return pos + 8

    def element(self, pos: int, ds: list[Any], stack: list[list[Any]]) -> int:
        limit, implicit, buf = ds[2], ds[3], self.buf
        if pos + 8 > limit:
            if ds[1] is None:
                raise self.fail(f"sequence item not closed: no item delimiter before {limit}")
            raise self.fail(f"{limit - pos} stray bytes after the last element at offset {pos}")
        if implicit:
            group, elem, length = self.plain_header.unpack_from(buf, pos)
            vr, header = None, 8
        else:
            group, elem, vr, length = self.explicit_header.unpack_from(buf, pos)
            header = 8
            if group == 0xFFFE:
                (length,) = self.u32.unpack_from(buf, pos + 4)
            elif vr in _LONG_VRS:
                if pos + 12 > limit:
                    raise self.fail(f"element header at offset {pos} is cut short")
                (length,) = self.u32.unpack_from(buf, pos + 8)
                header = 12
            elif vr not in _SHORT_VRS:
                raise self.bad_vr(group << 16 | elem, pos, vr)
        tag = group << 16 | elem
        if group == 0xFFFE:
            if tag == _ITEM_END and ds[1] is None and len(stack) > 1:
                if length:
                    raise self.fail(f"item delimiter at offset {pos} has length {length}")
                stack.pop()
                return pos + 8
            raise self.fail(f"{_name(tag)} at offset {pos} where a data element was expected")
        start = pos + header
        if self.collect and len(stack) == 1:
            self.top_element(tag, vr, start, length)
        if length == _UNDEFINED:
            if tag == _PIXEL_DATA and (vr in (b"OB", b"OW") or implicit):
                return self.fragments(start, ds, len(stack))
            if vr in (b"SQ", b"UN") or implicit:
                self.push_sequence(stack, None, limit, implicit or vr == b"UN", pos)
                return start
            raise self.fail(f"element {_name(tag)} at offset {pos} has undefined length")
        end = start + length
        if end > limit:
            raise self.fail(
                f"element {_name(tag)} at offset {pos} declares {length} bytes, "
                f"only {limit - start} remain"
            )
        if vr == b"SQ" or (implicit and tag in _SQ_TAGS):
            self.push_sequence(stack, end, end, implicit, pos)
            return start
        if tag in _WATCHED:
            self.watch(tag, start, end, ds[4], len(stack) == 1)
        elif tag == _PIXEL_DATA:
            self.native_pixels(pos, length, ds[4], len(stack) == 1)
        return end

    def bad_vr(self, tag: int, pos: int, vr: bytes) -> InvalidDataset:
        if pos == self.start:
            return self.fail(
                "the dataset is not in its declared transfer syntax: its first element "
                f"{_name(tag)} has no explicit VR"
            )
        return self.fail(f"element {_name(tag)} at offset {pos} has an invalid VR {vr!r}")

    def push_sequence(
        self, stack: list[list[Any]], end: int | None, limit: int, implicit: bool, pos: int
    ) -> None:
        if len(stack) >= 2 * MAX_SEQUENCE_DEPTH:
            raise self.fail(
                f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels at offset {pos}"
            )
        stack.append([_SQ, end, limit, implicit, None])

    def watch(self, tag: int, start: int, end: int, attrs: dict[int, Any], top: bool) -> None:
        raw = self.buf[start:end]
        if tag in _US_TAGS:
            attrs[tag] = self.u16.unpack_from(raw)[0] if end - start >= 2 else None
        elif tag == _FRAMES:
            text = bytes(raw).strip(b" \0")
            try:
                attrs[tag] = int(text) if text else None
            except ValueError:
                raise self.fail("Number of Frames (0028,0008) is not an integer") from None
        elif tag == _PHOTOMETRIC:
            attrs[tag] = bytes(raw).strip(b" \0")
        elif top:
            uid = bytes(raw).rstrip(b"\0 ").decode("ascii", "replace")
            self.uids[0 if tag == _SOP_CLASS else 1] = uid

    def native_pixels(self, pos: int, length: int, attrs: dict[int, Any], top: bool) -> None:
        if not self.native and top:
            raise self.fail(
                f"Pixel Data at offset {pos} has a defined length in an encapsulated "
                "transfer syntax (fragments expected)"
            )
        rows, columns, bits = attrs.get(_ROWS), attrs.get(_COLUMNS), attrs.get(_BITS)
        if rows is None or columns is None or not bits:
            if not top:  # an item's private pixel data without image attributes: bounds only
                return
            raise self.fail("Pixel Data without Rows, Columns or Bits Allocated")
        samples = attrs.get(_SAMPLES) or 1
        frames = attrs.get(_FRAMES)
        frames = 1 if frames is None else frames
        expected = (rows * columns * samples * frames * bits + 7) // 8
        if attrs.get(_PHOTOMETRIC) == b"YBR_FULL_422":
            expected = expected // 3 * 2
        if length != expected and not (expected % 2 and length == expected + 1):
            raise self.fail(
                f"Pixel Data holds {length} bytes; Rows {rows} x Columns {columns} x Samples "
                f"{samples} x Frames {frames} x Bits Allocated {bits} need {expected}"
            )

    def fragments(self, pos: int, ds: list[Any], depth: int) -> int:
        """Encapsulated Pixel Data: offset table item, fragment items, sequence delimiter."""
        if self.native:
            raise self.fail("Pixel Data has undefined length in a native transfer syntax")
        limit, count = ds[2], 0
        while True:
            if pos + 8 > limit:
                raise self.fail("Pixel Data fragments are not closed by a sequence delimiter")
            group, elem, length = self.plain_header.unpack_from(self.buf, pos)
            tag = group << 16 | elem
            if tag == _SEQ_END:
                if length:
                    raise self.fail(f"sequence delimiter at offset {pos} has length {length}")
                if count < 2:
                    raise self.fail("encapsulated Pixel Data holds no fragment")
                return pos + 8
            what = "Basic Offset Table" if count == 0 else f"fragment {count}"
            if tag != _ITEM:
                raise self.fail(f"{_name(tag)} at offset {pos} where the {what} item was expected")
            if length == _UNDEFINED or pos + 8 + length > limit:
                raise self.fail(
                    f"{what} of Pixel Data at offset {pos} declares {length} bytes, "
                    f"only {limit - pos - 8} remain"
                )
            if count == 0 and length % 4:
                raise self.fail(f"Basic Offset Table length {length} is not a multiple of 4")
            pos += 8 + length
            count += 1
