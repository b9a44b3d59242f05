"""Frames and bulk data of one instance, in the transfer syntax the client negotiated.

Pure functions over a parsed dataset (callers run them in worker threads: decoding is CPU).
- Stored syntax asked: the stored bytes of each frame (encapsulated fragments joined, or a
  slice of native pixel data).
- Native pixel data asked of a compressed (or big-endian) object: only the requested frames
  are decoded, little endian, colour as RGB (pydicom converts YCbCr on decoding).
- Another compressed syntax: the object is converted by `shared.transcode` (lossless encoders
  only), then its frames are taken.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from shared.dicomweb.media import DEFLATED_LE, EXPLICIT_LE, NATIVE_LE, frame_media_type, part_type
from shared.dicomweb.metadata import number_of_frames
from shared.errors import BadRequest, NoConversion, NotFound
from shared.transcode import choose, convert, ts_name

MAX_FRAMES_PER_REQUEST = 10_000
_STORED_NATIVE = (*NATIVE_LE, DEFLATED_LE)  # pydicom holds their pixel data as native LE bytes


def parse_frame_numbers(text: str) -> list[int]:
    """`1,3,5` -> [1, 3, 5]; BadRequest unless positive integers (PS3.18 10.4.1.1.5)."""
    items = [x.strip() for x in text.split(",")]
    if not items or any(not x.isdigit() for x in items):
        raise BadRequest(f"frame list must be comma-separated positive integers: {text[:40]!r}")
    if len(items) > MAX_FRAMES_PER_REQUEST:
        raise BadRequest(f"at most {MAX_FRAMES_PER_REQUEST} frames per request")
    numbers = [int(x) for x in items]
    if any(n < 1 for n in numbers):
        raise BadRequest("frame numbers start at 1")
    return numbers


def stored_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if not ts:
        raise NoConversion("the object has no transfer syntax in its file meta")
    return str(ts)


def frames_part_type(target: str) -> tuple[str, str]:
    """(media type, part Content-Type) of frames sent in `target`. Native frames are labelled
    Explicit VR Little Endian whatever the object's (the bytes are the same)."""
    media = frame_media_type(target)
    label = EXPLICIT_LE if media == "application/octet-stream" else target
    return media, part_type(media, label)


def extract(ds: Dataset, numbers: Sequence[int], target: str) -> list[bytes]:
    """The requested frames (1-based) of a dataset read with its pixel data, in `target`."""
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data")
    stored = stored_syntax(ds)
    nframes = number_of_frames(ds)
    if max(numbers) > nframes:
        raise NotFound(f"the instance has {nframes} frame(s)")
    if target in NATIVE_LE:
        if stored in _STORED_NATIVE:
            return _native_slices(ds, numbers, nframes)
        return [_decoded(ds, stored, n) for n in numbers]
    if target != stored:
        plan = choose(stored, [target])
        ds = convert(ds, plan)
    frames = list(generate_frames(ds.PixelData, number_of_frames=nframes))
    return [frames[n - 1] for n in numbers]


def _native_slices(ds: Dataset, numbers: Sequence[int], nframes: int) -> list[bytes]:
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    bits *= int(ds.BitsAllocated)
    if bits % 8:
        raise NoConversion("frames of this bit-packed object do not start on byte boundaries")
    size = bits // 8
    data = ds.PixelData
    if len(data) < size * nframes:
        raise NoConversion("the pixel data is shorter than its frames")
    return [bytes(data[(n - 1) * size : n * size]) for n in numbers]


def _decoded(ds: Dataset, stored: str, number: int) -> bytes:
    try:
        arr, _ = get_decoder(UID(stored)).as_array(ds, index=number - 1, as_rgb=True)  # type: ignore[arg-type]
    except Exception as exc:
        raise NoConversion(f"frame {number} ({ts_name(stored)}) cannot be decoded: {exc}") from exc
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def bulk_value(ds: Dataset, tag_hex: str) -> bytes:
    """A top-level binary value (the target of a BulkDataURI other than the pixel data)."""
    if len(tag_hex) != 8:
        raise BadRequest("bulk data tag must be 8 hex digits")
    try:
        tag = int(tag_hex, 16)
    except ValueError as exc:
        raise BadRequest("bulk data tag must be 8 hex digits") from exc
    if tag not in ds:
        raise NotFound(f"no element {tag_hex} in the instance")
    value = ds[tag].value
    if isinstance(value, bytes):
        return value
    raise NotFound(f"element {tag_hex} is not bulk data")
