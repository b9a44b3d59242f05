"""WADO-RS helpers without I/O: multipart framing, DICOM JSON metadata, frames, rendering.

The app streams instance bytes from the store itself (never building a study in memory); the
functions here work on one instance at a time and are called from worker threads because
pydicom, numpy and Pillow are CPU-bound.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError

from shared.errors import BadRequest, InvalidDataset, NoConversion, NotFound

BULK_THRESHOLD_BYTES = 1024

# Compressed transfer syntaxes: the media type a frame of that syntax travels as (PS3.18 8.7.3).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


def new_boundary() -> str:
    return "hpacs-" + secrets.token_hex(12)


def part_header(boundary: str, content_type: str, first: bool) -> bytes:
    lead = b"" if first else b"\r\n"
    return lead + f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()


def closing(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


def multipart_content_type(boundary: str, part_type: str, extra: str = "") -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}{extra}'


def parse_dataset(data: bytes, stop_before_pixels: bool = False) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels, force=True)
    except (InvalidDicomError, EOFError, ValueError, TypeError) as exc:
        raise InvalidDataset(f"stored object is not readable DICOM: {exc}") from exc


def metadata_json(ds: Dataset, instance_url: str) -> dict[str, Any]:
    """DICOM JSON of an instance; bulk data (pixel data, large binary values) as URIs."""

    def bulk(elem: DataElement) -> str:
        if elem.tag == 0x7FE00010:
            return f"{instance_url}/frames/{_frame_list(ds)}"
        return f"{instance_url}/bulkdata/{elem.tag:08X}"

    d = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD_BYTES, bulk_data_element_handler=bulk)
    if "7FE00010" not in d and ("PixelData" in ds or "Rows" in ds):  # read stop_before_pixels
        d["7FE00010"] = {"vr": "OW", "BulkDataURI": f"{instance_url}/frames/{_frame_list(ds)}"}
    # file meta is not part of the dataset in DICOM JSON; the transfer syntax helps viewers
    ts = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
    if ts:
        d["00020010"] = {"vr": "UI", "Value": [str(ts)]}
    return d


def _frame_list(ds: Dataset) -> str:
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return ",".join(str(i) for i in range(1, n + 1))


def parse_frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise BadRequest(f"frame list must be comma-separated integers: {text[:40]!r}") from exc
    if not numbers or any(n < 1 for n in numbers):
        raise BadRequest("frame numbers start at 1")
    return numbers


def extract_frames(ds: Dataset, numbers: Sequence[int]) -> tuple[list[bytes], str, str]:
    """The requested frames' bytes as stored, their media type and the transfer syntax."""
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data")
    ts = str(ds.file_meta.TransferSyntaxUID)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if max(numbers) > nframes:
        raise NotFound(f"the instance has {nframes} frame(s)")
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        frames = list(generate_frames(ds.PixelData, number_of_frames=nframes))
        media = FRAME_MEDIA_TYPES.get(ts, "application/octet-stream")
        return [frames[n - 1] for n in numbers], media, ts
    if ts == "1.2.840.10008.1.2.2":
        raise NoConversion("frames of big-endian instances are not served")
    size = (
        int(ds.Rows)
        * int(ds.Columns)
        * int(ds.get("SamplesPerPixel", 1))
        * int(ds.BitsAllocated)
        // 8
    )
    data = ds.PixelData
    return [bytes(data[(n - 1) * size : n * size]) for n in numbers], "application/octet-stream", ts


def choose_image_type(accept: str) -> str:
    """The first of image/jpeg or image/png the client lists (JPEG for wildcards), else 406."""
    types = [t.split(";")[0].strip() for t in (accept or "").lower().split(",") if t.strip()]
    for t in types or ["image/jpeg"]:
        if t in ("image/jpeg", "image/png"):
            return t
        if t in ("*/*", "image/*"):
            return "image/jpeg"
    raise NoConversion(f"rendered media types are image/jpeg and image/png, not {accept[:60]!r}")


def parse_window(text: str | None) -> tuple[float, float] | None:
    """`window=center,width[,function]` (PS3.18 8.3.5.1.4); only linear is supported."""
    if not text:
        return None
    parts = text.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (ValueError, IndexError) as exc:
        raise BadRequest("window must be center,width[,linear]") from exc
    if width <= 0:
        raise BadRequest("window width must be > 0")
    if len(parts) > 2 and parts[2].strip().lower() not in ("linear", ""):
        raise BadRequest("only the linear window function is supported")
    return center, width


def render(
    ds: Dataset,
    frame: int = 1,
    window: tuple[float, float] | None = None,
    media_type: str = "image/jpeg",
    max_size: int = 0,
    quality: int = 90,
) -> bytes:
    """An 8-bit image of one frame: modality LUT, then the window (request, dataset, min/max)."""
    from PIL import Image

    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise NoConversion(f"pixel data cannot be decoded: {exc}") from exc
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if frame < 1 or frame > nframes:
        raise NotFound(f"the instance has {nframes} frame(s)")
    if nframes > 1:
        arr = arr[frame - 1]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    else:
        values = arr.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(
            ds.get("RescaleIntercept", 0) or 0
        )
        center, width = window or _dataset_window(ds) or _minmax_window(values)
        lo = center - 0.5 - (width - 1) / 2
        scaled = np.clip((values - lo) / max(width - 1, 1e-6) * 255.0, 0, 255)
        if photometric == "MONOCHROME1":
            scaled = 255.0 - scaled
        img = Image.fromarray(scaled.astype(np.uint8), "L")
    if max_size:
        img.thumbnail((max_size, max_size))
    out = io.BytesIO()
    if media_type == "image/png":
        img.save(out, format="PNG")
    else:
        img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _dataset_window(ds: Dataset) -> tuple[float, float] | None:
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None:
        return None
    c = c[0] if isinstance(c, pydicom.multival.MultiValue) else c
    w = w[0] if isinstance(w, pydicom.multival.MultiValue) else w
    try:
        return float(c), max(float(w), 1.0)
    except (TypeError, ValueError):
        return None


def _minmax_window(values: np.ndarray) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    return (lo + hi) / 2, max(hi - lo, 1.0)


def bulk_value(ds: Dataset, tag_hex: str) -> bytes:
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
