"""Rendered and thumbnail resources (PS3.18 8.3.5, 9.5): parameters, then one 8-bit image.

`parse_params` validates every query parameter (400 with the parameter's name, never a 500 or
a blank image); `render` decodes one frame and maps it to 8 bits: colour as RGB (pydicom's
decoders already turn YCbCr into RGB, so nothing converts it again), palette colour through its
LUT, grayscale through the modality LUT and the window (the request's, the dataset's, or the
frame's min/max), MONOCHROME1 inverted. Pillow writes JPEG, PNG or GIF.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.uid import UID

from shared.dicomweb.frames import stored_syntax
from shared.dicomweb.metadata import number_of_frames
from shared.errors import BadRequest, NoConversion, NotFound

THUMBNAIL_PX = 128
MAX_VIEWPORT_PX = 8192
WINDOW_FUNCTIONS = ("linear", "linear_exact", "sigmoid")
_PIL_FORMAT = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int
    region: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh in source pixels


@dataclass(frozen=True)
class RenderParams:
    media_type: str = "image/jpeg"
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = 90


def parse_params(query: Mapping[str, str], media_type: str) -> RenderParams:
    """The rendering parameters of a request's query; BadRequest names the bad one.
    Unknown parameters (and `annotation`, which we do not burn in) are ignored (PS3.18 8.3)."""
    return RenderParams(
        media_type=media_type,
        window=parse_window(query.get("window")),
        viewport=parse_viewport(query.get("viewport")),
        quality=parse_quality(query.get("quality")),
    )


def _finite(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise BadRequest(f"{what} must be a number, got {text.strip()[:20]!r}") from None
    if not math.isfinite(v):
        raise BadRequest(f"{what} must be a finite number, got {text.strip()[:20]!r}")
    return v


def parse_window(text: str | None) -> Window | None:
    """`window=center,width[,function]`; width > 0; linear, linear_exact or sigmoid."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise BadRequest("window must be center,width[,function]")
    center, width = _finite(parts[0], "window center"), _finite(parts[1], "window width")
    if width <= 0:
        raise BadRequest("window width must be > 0")
    function = (parts[2] if len(parts) == 3 else "linear").lower().replace("-", "_") or "linear"
    if function not in WINDOW_FUNCTIONS:
        raise BadRequest(f"window function must be one of {', '.join(WINDOW_FUNCTIONS)}")
    return Window(center, width, function)


def parse_viewport(text: str | None) -> Viewport | None:
    """`viewport=vw,vh` or `vw,vh,sx,sy,sw,sh` (a source region, cropped first; a negative
    sw or sh flips it)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    usage = "viewport must be vw,vh or vw,vh,sx,sy,sw,sh (integers, only sw and sh signed)"
    if len(parts) not in (2, 6):
        raise BadRequest(usage)
    for i, p in enumerate(parts):
        digits = p[1:] if i >= 4 and p.startswith("-") else p
        if not digits.isdigit() or len(digits) > 9:
            raise BadRequest(usage)
    vw, vh, *rest = (int(p) for p in parts)
    if not (0 < vw <= MAX_VIEWPORT_PX and 0 < vh <= MAX_VIEWPORT_PX):
        raise BadRequest(f"viewport width and height must be 1-{MAX_VIEWPORT_PX}")
    region = None
    if rest:
        sx, sy, sw, sh = rest
        if sw == 0 or sh == 0:
            raise BadRequest("the viewport's source region must not be empty")
        region = (sx, sy, sw, sh)
    return Viewport(vw, vh, region)


def parse_quality(text: str | None) -> int:
    if text is None or text.strip() == "":
        return 90
    if not text.strip().isdigit() or not 1 <= int(text.strip()) <= 100:
        raise BadRequest(f"quality must be an integer from 1 to 100, got {text.strip()[:20]!r}")
    return int(text.strip())


def render(ds: Dataset, frame: int, params: RenderParams, max_size: int = 0) -> bytes:
    """One frame (1-based) of a dataset read with its pixel data, as an image file."""
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data to render")
    nframes = number_of_frames(ds)
    if not 1 <= frame <= nframes:
        raise NotFound(f"the instance has {nframes} frame(s)")
    stored = stored_syntax(ds)
    try:
        arr, info = get_decoder(UID(stored)).as_array(ds, index=frame - 1, as_rgb=True)  # type: ignore[arg-type]
    except Exception as exc:
        raise NoConversion(f"pixel data cannot be decoded: {exc}") from exc
    photometric = str(info.get("photometric_interpretation") or ds.get("PhotometricInterpretation"))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        img = Image.fromarray(_to_8bit_rgb(arr, ds), "RGB")
    else:
        img = Image.fromarray(_grayscale(arr, ds, params.window, photometric), "L")
    img = _fit(img, params.viewport, max_size)
    out = io.BytesIO()
    fmt = _PIL_FORMAT.get(params.media_type, "JPEG")
    if fmt == "JPEG":
        img.save(out, format=fmt, quality=params.quality)
    else:
        img.save(out, format=fmt)
    return out.getvalue()


def _to_8bit_rgb(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    bits = int(ds.get("BitsStored", 8) or 8)
    if bits > 8:  # 16-bit colour (or palette LUT output): scale to 8 bits
        return (arr.astype(np.float64) / ((1 << bits) - 1) * 255.0).clip(0, 255).astype(np.uint8)
    return arr.clip(0, 255).astype(np.uint8)


def _grayscale(arr: np.ndarray, ds: Dataset, window: Window | None, photometric: str) -> np.ndarray:
    values = apply_modality_lut(arr, ds).astype(np.float64)
    w = window or _dataset_window(ds) or _minmax_window(values)
    if w.function == "sigmoid":
        scaled = 255.0 / (1.0 + np.exp(-4.0 * (values - w.center) / w.width))
    elif w.function == "linear_exact":
        scaled = (values - (w.center - w.width / 2)) / w.width * 255.0
    else:  # PS3.3 C.11.2.1.2.1
        lo = w.center - 0.5 - (w.width - 1) / 2
        scaled = (values - lo) / max(w.width - 1, 1e-6) * 255.0
    scaled = np.clip(scaled, 0, 255)
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled
    return scaled.astype(np.uint8)


def _dataset_window(ds: Dataset) -> Window | None:
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None:
        return None
    c = c[0] if isinstance(c, MultiValue) else c
    w = w[0] if isinstance(w, MultiValue) else w
    try:
        center, width = float(c), float(w)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        return None
    return Window(center, max(width, 1.0))


def _minmax_window(values: np.ndarray) -> Window:
    lo, hi = float(values.min()), float(values.max())
    return Window((lo + hi) / 2, max(hi - lo, 1.0))


def _fit(img: Image.Image, viewport: Viewport | None, max_size: int) -> Image.Image:
    if viewport is not None and viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        x0, x1 = sorted((sx, sx + sw))
        y0, y1 = sorted((sy, sy + sh))
        if x0 < 0 or y0 < 0 or x1 > img.width or y1 > img.height:
            raise BadRequest("the viewport's source region lies outside the image")
        img = img.crop((x0, y0, x1, y1))
        if sw < 0:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if viewport is not None:
        img.thumbnail((viewport.width, viewport.height))
    elif max_size:
        img.thumbnail((max_size, max_size))
    return img
