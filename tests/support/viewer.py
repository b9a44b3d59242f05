"""Images whose rendering can be checked in a browser, and the check itself.

Each instance has a known pattern (a gradient that tells orientation) and a window that maps
every pixel into a mid-grey range, so on the viewer's canvas the image is the only non-black
area. `expected_display` decodes the instance with pydicom and applies the same modality and
VOI LUT (the linear window of PS3.3 C.11.2.1.2) that the viewer applies; `compare` finds the
image on the canvas, scales the expectation onto it and measures the difference.
"""

from __future__ import annotations

import base64
import io
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, generate_uid

from shared.synthetic import ROOT, StudySpec, make_instance

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SIZE = 128


def _spec(modality: str, description: str, study_uid: str, **kw: Any) -> StudySpec:
    return StudySpec(
        patient_id="VIEW1",
        patient_name="VIEWER^TEST",
        modality=modality,
        study_description=description,
        rows=SIZE,
        columns=SIZE,
        study_uid=study_uid,
        **kw,
    )


def ct_series(study_uid: str, count: int = 3, description: str = "CT PATTERN") -> list[Dataset]:
    """A CT series in Hounsfield units -120..+261 (slope 1, intercept -1024), window 60/500."""
    series_uid = generate_uid(prefix=ROOT)
    out = []
    for i in range(1, count + 1):
        ds = make_instance(_spec("CT", description, study_uid), study_uid, series_uid, 1, i)
        r, c = np.mgrid[0:SIZE, 0:SIZE]
        hu = -120 + 2 * r + c + i  # dark top-left, bright bottom-right: orientation shows
        ds.PixelData = (hu + 1024).astype(np.uint16).tobytes()
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 60, 500
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.SliceThickness = 1
        out.append(ds)
    return out


def j2k_instance(study_uid: str) -> Dataset:
    """One CT slice of the same pattern, JPEG 2000 lossless (OpenJPEG through pylibjpeg)."""
    ds = ct_series(study_uid, 1, "CT J2K")[0]
    ds.compress(JPEG2000Lossless)
    return ds


def jpeg_lossless_series(study_uid: str, count: int = 2) -> list[Dataset]:
    """CT slices JPEG-lossless SV1 (1.2.840.10008.1.2.4.70), encoded by DCMTK's dcmcjpeg."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, ds in enumerate(ct_series(study_uid, count, "CT JPEG LOSSLESS")):
            src, dst = Path(tmp) / f"{i}.dcm", Path(tmp) / f"{i}.jpl.dcm"
            ds.save_as(src, enforce_file_format=True)
            subprocess.run(["dcmcjpeg", "+e1", str(src), str(dst)], check=True)
            enc = pydicom.dcmread(dst)
            assert enc.file_meta.TransferSyntaxUID == JPEGLosslessSV1
            out.append(enc)
    return out


def us_colour_instance(study_uid: str) -> Dataset:
    """A colour ultrasound frame, JPEG baseline YBR_FULL_422 (Pillow's 4:2:2 encoder)."""
    series_uid = generate_uid(prefix=ROOT)
    spec = _spec("US", "US COLOUR", study_uid, sop_class_uid=US_IMAGE_STORAGE)
    ds = make_instance(spec, study_uid, series_uid, 1, 1)
    r, c = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([40 + c * 1.4, 40 + r * 1.4, np.full_like(r, 120)], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "JPEG", quality=95, subsampling=1)
    for name in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope"):
        if name in ds:
            delattr(ds, name)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


def expected_display(ds: Dataset) -> np.ndarray:
    """What a viewer should show: RGB as decoded; grey through rescale and the linear window."""
    arr = ds.pixel_array
    if ds.SamplesPerPixel == 3:
        return arr.astype(np.uint8)
    values = arr * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(out, 0, 255).astype(np.uint8)


def canvas_pixels(page: Any) -> np.ndarray | None:
    """The viewport canvas as an RGB array (read back with toDataURL), or None if absent."""
    url = page.evaluate(
        "() => { const c = document.querySelector('canvas.cornerstone-canvas');"
        " return c && c.width ? c.toDataURL('image/png') : null; }"
    )
    if not url:
        return None
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@dataclass(frozen=True)
class Match:
    ok: bool
    mean_abs: float
    p99_abs: float
    box: tuple[int, int, int, int] | None  # top, left, bottom, right on the canvas
    why: str = ""
    shown: Any = None  # the canvas compared (RGB array)


def compare(canvas: np.ndarray, expected: np.ndarray, mean_max: float = 6.0) -> Match:
    """Find the image (the non-black area), scale the expectation to it, compare the inner
    part (a margin of 4 canvas pixels is left out: edge interpolation differs by renderer)."""
    lum = canvas.max(axis=2)
    rows, cols = np.nonzero(lum > 12)
    if rows.size < 400:
        return Match(False, 255.0, 255.0, None, "the canvas is blank", canvas)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    h, w = bottom - top, right - left
    mode = "RGB" if expected.ndim == 3 else "L"
    scaled = np.asarray(
        Image.fromarray(expected, mode).resize((int(w), int(h)), Image.Resampling.BILINEAR)
    ).astype(np.int16)
    shown = canvas[top:bottom, left:right].astype(np.int16)
    if expected.ndim == 2:
        shown = shown.mean(axis=2)
    m = 4
    diff = np.abs(shown[m:-m, m:-m] - scaled[m:-m, m:-m])
    mean_abs, p99 = float(diff.mean()), float(np.percentile(diff, 99))
    box = (int(top), int(left), int(bottom), int(right))
    aspect_ok = abs(h / w - expected.shape[0] / expected.shape[1]) < 0.03
    ok = aspect_ok and mean_abs <= mean_max and p99 <= 40
    why = "" if aspect_ok else f"image area {h}x{w} does not have the image's aspect"
    return Match(ok, mean_abs, p99, box, why, canvas)
