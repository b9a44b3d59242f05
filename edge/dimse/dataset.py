"""Small datasets of DIMSE messages (identifiers, event information): pydicom's public reader
and writer in the accepted transfer syntax. Large datasets (C-STORE) never come here: they go
from the socket to a spool file (edge/dimse/spool.py) or from the cache to the socket.
"""

from __future__ import annotations

import zlib
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

DEFLATED = "1.2.840.10008.1.2.1.99"
MAX_IDENTIFIER_BYTES = 16 * 1024 * 1024  # identifiers and commitment requests, not images


class DatasetError(ValueError):
    """A message dataset that cannot be decoded (answered 0xC000-class, not aborted)."""


def decode(data: bytes, transfer_syntax: str) -> Dataset:
    """Decode and fully convert a message dataset; raises DatasetError."""
    ts = UID(transfer_syntax)
    try:
        if ts == DEFLATED:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        ds = read_dataset(BytesIO(data), ts.is_implicit_VR, ts.is_little_endian)
        _touch(ds, 0)
    except DatasetError:
        raise
    except Exception as exc:  # pydicom raises many types for malformed input
        raise DatasetError(f"cannot decode the dataset: {exc}") from exc
    return ds


def _touch(ds: Dataset, depth: int) -> None:
    """Check every element's length against the bytes present (pydicom reads a truncated value
    silently) and convert it now (pydicom defers), so a malformed value fails here."""
    if depth > 64:
        raise DatasetError("sequences nested deeper than 64 levels")
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if isinstance(value, bytes) and length not in (None, 0xFFFFFFFF) and len(value) != length:
            raise DatasetError(f"element {tag} declares {length} bytes, {len(value)} present")
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _touch(item, depth + 1)


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """A dataset in `transfer_syntax` (implicit/explicit VR, little/big endian, deflated)."""
    ts = UID(transfer_syntax)
    fp = DicomBytesIO()
    fp.is_little_endian = ts.is_little_endian
    fp.is_implicit_VR = ts.is_implicit_VR
    write_dataset(fp, ds)
    out = fp.getvalue()
    if ts == DEFLATED:
        c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        out = c.compress(out) + c.flush()
    return out
