"""DICOM JSON (PS3.18 Annex F) of an instance's header, with BulkDataURIs for large values.

`/metadata` of a study encodes every instance, so this is on the viewer's critical path.
pydicom's `Dataset.to_json_dict` converts each raw element to a `DataElement` first and costs
~0.7 ms for a small CT header; `instance_json` encodes the common cases straight from the raw
bytes (ASCII text, binary numbers, bulk data) and hands everything else (sequences' items
aside, non-ASCII or ISO 2022 text, ambiguous or unknown VRs) to pydicom, so the output is
pydicom's (tests/test_dicomweb_metadata.py compares the two over pydicom's test files).

An element that cannot be encoded (a malformed DS, say) loses its value, not the response.
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from shared.errors import InvalidDataset

BULK_THRESHOLD_BYTES = 1024
PIXEL_DATA = 0x7FE00010
HEADER_PROBE_BYTES = 64 * 1024  # what a reader fetches first; most headers end well before

_BINARY = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_NUMBERS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_SINGLE_TEXT = {"LT", "ST", "UT"}
_SPLIT_STRIP_EACH = {"SH", "LO", "UC"}  # pydicom strips each value's trailing padding
_SPLIT_STRIP_ALL = {"CS", "AS", "DA", "TM", "DT"}  # ... and these only the whole value's

BulkUri = Callable[[int], str]  # tag -> BulkDataURI (top-level elements only)


def parse_header(data: bytes) -> Dataset:
    """The dataset up to (not including) the pixel data; InvalidDataset if not DICOM."""
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except (InvalidDicomError, EOFError, ValueError, TypeError, struct.error) as exc:
        raise InvalidDataset(f"stored object is not readable DICOM: {exc}") from exc


def header_complete(ds: Dataset, probe_len: int) -> bool:
    """Whether a header parsed from the first `probe_len` bytes can be trusted as whole: the
    probe was the whole object, or reading stopped at the pixel data inside it."""
    return probe_len < HEADER_PROBE_BYTES or "PixelData" in ds or "Rows" in ds


def frame_list(ds: Dataset) -> str:
    n = number_of_frames(ds)
    return ",".join(str(i) for i in range(1, n + 1))


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def instance_json(ds: Dataset, instance_url: str, transfer_syntax: str = "") -> dict[str, Any]:
    """DICOM JSON of one instance. Pixel data is a BulkDataURI to its frames (present even when
    the header was read without it); other top-level bulk values point at `/bulkdata/{tag}`.
    The transfer syntax (file meta, not in DICOM JSON) is added as (0002,0010) for viewers."""

    def bulk(tag: int) -> str:
        if tag == PIXEL_DATA:
            return f"{instance_url}/frames/{frame_list(ds)}"
        return f"{instance_url}/bulkdata/{tag:08X}"

    out = dataset_json(ds, bulk)
    if "7FE00010" not in out and ("Rows" in ds or "PixelData" in ds):
        out["7FE00010"] = {"vr": "OW", "BulkDataURI": bulk(PIXEL_DATA)}
    ts = transfer_syntax
    meta = getattr(ds, "file_meta", None)
    if not ts and meta is not None:
        ts = str(meta.get("TransferSyntaxUID", "") or "")
    if ts:
        out["00020010"] = {"vr": "UI", "Value": [ts]}
    return out


def dataset_json(ds: Dataset, bulk: BulkUri | None) -> dict[str, Any]:
    """DICOM JSON of a dataset; `bulk` names the URI of large binary values (None: inline)."""
    out: dict[str, Any] = {}
    for elem in ds.values():
        tag = int(elem.tag)
        try:
            out[f"{tag:08X}"] = _element(ds, elem, bulk)
        except Exception:
            vr = elem.VR or _dictionary_vr(tag) or "UN"
            out[f"{tag:08X}"] = {"vr": vr}  # unreadable value: the element without it
    return out


def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _element(ds: Dataset, elem: DataElement | RawDataElement, bulk: BulkUri | None) -> Any:
    if not isinstance(elem, RawDataElement):
        return _slow(ds, elem.tag, bulk)
    vr = elem.VR if not elem.is_implicit_VR else _dictionary_vr(elem.tag)
    raw = elem.value
    if vr is None or vr == "UN" or " or " in vr or raw is None:
        return _slow(ds, elem.tag, bulk)  # unknown, ambiguous (US or SS...), or deferred
    if vr == "SQ":
        items = ds[elem.tag].value
        return {"vr": "SQ", "Value": [dataset_json(item, None) for item in items]}
    if not raw:
        return {"vr": vr}
    if vr in _BINARY:
        if bulk is not None and len(raw) > (BULK_THRESHOLD_BYTES // 4) * 3:
            return {"vr": vr, "BulkDataURI": bulk(int(elem.tag))}
        return {"vr": vr, "InlineBinary": base64.b64encode(raw).decode("ascii")}
    fmt = _NUMBERS.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        if len(raw) % size:
            return _slow(ds, elem.tag, bulk)
        order = "<" if elem.is_little_endian else ">"
        return {"vr": vr, "Value": list(struct.unpack(f"{order}{len(raw) // size}{fmt}", raw))}
    if vr == "AT":
        return _slow(ds, elem.tag, bulk)
    if not raw.isascii() or b"\x1b" in raw:
        return _slow(ds, elem.tag, bulk)  # decoded by pydicom with the character set
    value = _text(vr, raw.decode("ascii"))
    if value is None:
        return _slow(ds, elem.tag, bulk)
    return {"vr": vr, "Value": value} if value else {"vr": vr}


def _text(vr: str, text: str) -> list[Any] | None:
    """Values of an ASCII text element as pydicom decodes them; None: let pydicom decide."""
    if vr in _SINGLE_TEXT:
        v = text.rstrip("\0 ")
        return [v] if v else []
    if vr == "UR":
        v = text.rstrip(" ")
        return [v] if v else []
    if vr == "PN":
        text = text.rstrip("\0 ")
        if not text:
            return []
        return [_person_name(v) for v in text.split("\\")]
    if vr == "AE":
        values = [v.strip() for v in text.split("\\")]
    elif vr in _SPLIT_STRIP_EACH:
        values = [v.rstrip("\0 ") for v in text.split("\\")]
    elif vr in _SPLIT_STRIP_ALL or vr == "UI":
        values = text.rstrip(" \x00").split("\\")
    elif vr == "IS":
        return _numbers(text, int)
    elif vr == "DS":
        return _numbers(text, float)
    else:
        return None
    if len(values) == 1 and not values[0]:
        return []
    return values


def _person_name(v: str) -> dict[str, str]:
    comps = v.split("=")
    out = {"Alphabetic": comps[0]}
    if len(comps) > 1:
        out["Ideographic"] = comps[1]
    if len(comps) > 2:
        out["Phonetic"] = comps[2]
    return out


def _numbers(text: str, kind: type[int] | type[float]) -> list[Any] | None:
    parts = [p.strip(" \x00") for p in text.split("\\")]
    if len(parts) == 1 and not parts[0]:
        return []
    if any(not p for p in parts):
        return None
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        return None
    if kind is float and not all(math.isfinite(v) for v in values):
        return None
    return values


def _slow(ds: Dataset, tag: Any, bulk: BulkUri | None) -> Any:
    """pydicom's own encoding of one element (it converts the raw value first)."""
    elem = ds[tag]
    if elem.VR == "SQ":
        return {"vr": "SQ", "Value": [dataset_json(item, None) for item in elem.value]}

    def handler(e: DataElement) -> str:
        assert bulk is not None
        return bulk(int(e.tag))

    return elem.to_json_dict(
        bulk_data_element_handler=handler if bulk is not None else None,
        bulk_data_threshold=BULK_THRESHOLD_BYTES,
    )


# ---- cache of encoded instances -----------------------------------------------------------------

# Instance URLs are encoded relative to this marker and completed per response (the public
# base depends on the request). In JSON text `"BulkDataURI":"` can only be that key: a quote
# inside a value is always escaped, so a value can never forge the pattern replaced below.
_BASE_MARK = "@dicomweb-base@"
_URI_KEY = b'"BulkDataURI":"'


def encode_instance(ds: Dataset, url_path: str, transfer_syntax: str = "") -> bytes:
    """JSON text of `instance_json` with URLs relative to the public base (see `with_base`);
    `url_path` is `/studies/{s}/series/{se}/instances/{i}`."""
    doc = instance_json(ds, _BASE_MARK + url_path, transfer_syntax)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def with_base(encoded: bytes, base: str) -> bytes:
    """Encoded instance(s) with their BulkDataURIs completed by the public DICOMweb root."""
    return encoded.replace(_URI_KEY + _BASE_MARK.encode(), _URI_KEY + base.encode())


class EncodedCache:
    """Encoded instances by the identity of their bytes (`InstanceRef.version`: SOP Instance
    UID and crc32c), least recently used out first, within a byte budget. Other bytes under
    the same UID (a replace on the edge, a correction) are another key, so an entry never goes
    stale."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> bytes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: bytes) -> None:
        if len(value) > self.max_bytes // 16:
            return  # one huge header does not evict everything else
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._entries[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped)
