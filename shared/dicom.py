"""DICOM header helpers: read only what the index needs, decode names by their character set."""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from shared import attributes, headerwalk
from shared.errors import InvalidDataset, InvalidUID
from shared.uids import is_valid_uid

# Elements the index stores (keyword -> Header field), from the one attribute registry. The
# catalog journal carries the same fields.
_INT_FIELDS = attributes.int_columns()
# UIDs are read from their raw bytes and lose only their padding (trailing NUL or space):
# pydicom's UID type strips all whitespace, so "1.2.3\n" would be indexed as "1.2.3" while the
# file keeps the newline; kept whole, the newline makes the value invalid and it is refused.
_UID_FIELDS = frozenset(a.column for a in attributes.STORED if a.kind == attributes.UID)


@dataclass(frozen=True)
class Header:
    """The indexed attributes of one instance, strings decoded to Unicode: one field per stored
    attribute of `shared.attributes.REGISTRY` (same name as its column) plus the transfer
    syntax; tests/test_attributes.py checks the two agree."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part: str = ""
    series_date: str = ""
    series_time: str = ""
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    specific_character_set: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _raw_uid(ds: Dataset, tag: int) -> str:
    """A UID as its bytes say, without its padding (see _UID_FIELDS)."""
    elem = ds.get_item(tag)
    if elem is None:
        return ""
    if isinstance(elem.value, bytes):
        return elem.value.decode("latin-1").rstrip("\0 ")
    return _text(elem.value)  # already converted by pydicom


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# Fast path (ingest performance, docs/ARCHITECTURE.md): pydicom's per-element conversion
# costs ~40 us (charset lookup, hooks, Tag comparisons), more than half of the header cost on
# small instances. A still-raw text element whose bytes are plain ASCII, in a character set
# where ASCII bytes mean ASCII, decodes to the same string; anything else takes pydicom's path.
_TAGS = {a.column: (a.keyword, a.tag) for a in attributes.STORED}
_FAST_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "IS", "LO", "PN", "SH", "TM", "UI"})
_ASCII_CHARSETS = frozenset(
    {b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 101", b"ISO_IR 109", b"ISO_IR 110",
     b"ISO_IR 126", b"ISO_IR 127", b"ISO_IR 138", b"ISO_IR 144", b"ISO_IR 148",
     b"ISO_IR 166", b"ISO_IR 192", b"GB18030", b"GBK"}
)  # fmt: skip
_SLOW = object()
_CHARSET_TAG = 0x00080005


def _fast_value(elems: dict[Any, Any], tag: int, is_int: bool) -> Any:
    elem = elems.get(tag)
    if elem is None:
        return None if is_int else ""
    if not isinstance(elem, RawDataElement) or type(elem.value) is not bytes:
        return _SLOW
    vr = elem.VR or dictionary_VR(tag)
    if vr == "US":  # binary: pydicom reads it (the header walk decodes its own, little-endian)
        return _SLOW
    return _walked_value(vr, elem.value, is_int)


def _fast_ok(ds: Dataset) -> dict[Any, Any] | None:
    """The dataset's element dict when the fast path applies (known ASCII-compatible charset)."""
    elems = getattr(ds, "_dict", None)
    if not isinstance(elems, dict):
        return None
    cs = elems.get(_CHARSET_TAG)
    if cs is None:
        return elems
    # dcmread converts (0008,0005) while reading (it needs the encodings), so the value is
    # usually a str already; several values (ISO 2022 code extensions) never qualify.
    value = cs.value
    if type(value) is bytes:
        name = value.rstrip(b"\0 ").strip()
    elif type(value) is str:
        name = value.strip().encode("ascii", "replace")
    else:
        return None
    return elems if name in _ASCII_CHARSETS else None


def header_from_dataset(ds: Dataset, transfer_syntax: str, *, fast: bool = True) -> Header:
    """Extract indexed attributes; raises InvalidDataset/InvalidUID for what cannot be indexed.

    `fast=False` forces pydicom's conversion for every element (the reference the fast path is
    tested against).
    """
    values: dict[str, Any] = {"transfer_syntax": transfer_syntax}
    elems = _fast_ok(ds) if fast else None
    try:
        for name, (keyword, tag) in _TAGS.items():
            is_int = name in _INT_FIELDS
            if name in _UID_FIELDS:
                values[name] = _raw_uid(ds, tag)
                continue
            value = _fast_value(elems, tag, is_int) if elems is not None else _SLOW
            if value is _SLOW:
                raw = ds.get(keyword)
                value = _int(raw) if is_int else _text(raw)
            values[name] = value
    except Exception as exc:  # pydicom defers decoding: any element may fail here
        raise InvalidDataset(f"cannot decode the header: {exc}") from exc
    return _checked(values, transfer_syntax)


def _checked(values: dict[str, Any], transfer_syntax: str) -> Header:
    for name in ("sop_instance_uid", "sop_class_uid", "study_uid", "series_uid"):
        uid = values.get(name, "")
        if not uid:
            raise InvalidDataset(f"missing required attribute {name}")
        if not is_valid_uid(uid):
            raise InvalidUID(f"{name} is not a valid UID: {uid[:80]!r}")
    if not is_valid_uid(transfer_syntax):
        raise InvalidUID(f"transfer syntax is not a valid UID: {transfer_syntax[:80]!r}")
    return Header(**values)


_WALK_PLAN = [
    (name, tag, name in _INT_FIELDS, dictionary_VR(tag)) for name, (_kw, tag) in _TAGS.items()
]


def _walked_value(vr: str, raw: bytes, is_int: bool) -> Any:
    """What `_fast_value` makes of a raw element (and a 2-byte US), without pydicom objects."""
    if vr == "US" and is_int:
        return int.from_bytes(raw, "little") if len(raw) == 2 else _SLOW
    if vr not in _FAST_VRS or not raw.isascii() or b"\\" in raw or b"\x1b" in raw:
        return _SLOW
    text = raw.decode("ascii")
    text = text.rstrip("\0 ") if vr == "UI" else text
    if "\0" in text:
        return _SLOW
    if not is_int:
        return text.strip()
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return _SLOW


WANTED_TAGS = frozenset(tag for _keyword, tag in _TAGS.values())


def walked_header(path: str | Path) -> Header | None:
    """The Header of a file by shared.headerwalk (no pydicom), or None when not certain to
    equal pydicom's; invalid UIDs raise as on pydicom's path."""
    with open(path, "rb") as fh:
        got = headerwalk.raw_elements(fh, os.fstat(fh.fileno()).st_size, WANTED_TAGS)
    if got is None:
        return None
    return header_from_raw(*got)


def header_from_raw(ts: str, raw: dict[int, tuple[bytes, bytes]]) -> Header | None:
    """The Header from the raw top-level elements of a little-endian dataset ({tag: (VR or
    b"" for implicit VR, value bytes)} of `WANTED_TAGS`, every one present in the dataset
    before its Pixel Data), or None when the values are not certain to decode as pydicom
    decodes them; invalid UIDs raise as on pydicom's path."""
    cs = raw.get(_CHARSET_TAG)
    if cs is not None and cs[1].rstrip(b"\0 ").strip() not in _ASCII_CHARSETS:
        return None
    values: dict[str, Any] = {"transfer_syntax": ts}
    for name, tag, is_int, dict_vr in _WALK_PLAN:
        item = raw.get(tag)
        if item is None:
            values[name] = None if is_int else ""
            continue
        if name in _UID_FIELDS:  # as _raw_uid: the bytes without their padding, nothing more
            values[name] = item[1].decode("latin-1").rstrip("\0 ")
            continue
        vr = item[0].decode("ascii") if item[0] else dict_vr
        value = _walked_value(vr, item[1], is_int)
        if value is _SLOW:
            return None
        values[name] = value
    return _checked(values, ts)


def read_header(source: str | Path | BinaryIO | bytes) -> Header:
    """Parse a Part-10 file up to the pixel data and return its indexed attributes.

    A file path first goes through `walked_header` (no pydicom, the common little-endian
    case); anything it is not certain about is parsed by pydicom, which also raises for
    malformed files."""
    if isinstance(source, str | Path):
        try:
            fast = walked_header(source)
        except OSError:
            fast = None
        if fast is not None:
            return fast
    return pydicom_header(source)


def pydicom_header(source: str | Path | BinaryIO | bytes) -> Header:
    """`read_header` by pydicom alone (what the walks leave to it, and malformed objects)."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True, defer_size=1024, force=False)
    except (InvalidDicomError, EOFError, ValueError, TypeError, NotImplementedError) as exc:
        raise InvalidDataset(f"not a readable DICOM Part-10 object: {exc}") from exc
    except Exception as exc:
        raise InvalidDataset(f"not a readable DICOM Part-10 object: {exc}") from exc
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not ts:
        raise InvalidDataset("file meta has no Transfer Syntax UID")
    return header_from_dataset(ds, str(ts))
