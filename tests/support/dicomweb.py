"""Objects DICOMweb tests need beyond synthetic CT: compressed by real encoders, and seeded.

JPEG lossless / extended / baseline come from DCMTK's `dcmcjpeg` (pydicom has no JPEG
encoder), colour JPEG baseline (YBR_FULL_422, as ultrasound sends it) from Pillow, JPEG-LS and
JPEG 2000 from pydicom's encoders. `seed_objects` puts Part-10 bytes in a bucket and journals
them for a site the way the sync agent does, so the cloud API serves them.
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from shared.catalog import CatalogRow
from shared.checksum import crc32c_bytes
from shared.dicom import read_header
from shared.keys import instance_key
from shared.store.base import ObjectStore
from shared.synthetic import StudySpec, iter_study, uid
from tests.support.cloud import append_rows, dataset_bytes
from tests.support.dcmtk import run

# dcmcjpeg options -> the transfer syntax they produce
DCMCJPEG = {
    "1.2.840.10008.1.2.4.70": "+e1",  # lossless, first-order prediction (SV1)
    "1.2.840.10008.1.2.4.57": "+el",  # lossless, any selection value
    "1.2.840.10008.1.2.4.51": "+ee",  # extended sequential (12 bit)
    "1.2.840.10008.1.2.4.50": "+eb",  # baseline (8 bit)
}


def study(n: int = 2, **kw: object) -> list[Dataset]:
    """A synthetic CT series (16-bit, 12 stored) with its own UIDs."""
    spec = StudySpec(instances_per_series=n, study_uid=uid(), **kw)  # type: ignore[arg-type]
    return list(iter_study(spec))


def eight_bit(ds: Dataset) -> Dataset:
    """The same image with 8 bits (JPEG baseline takes no more)."""
    arr = (ds.pixel_array >> 4).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = arr.tobytes()
    ds.WindowCenter, ds.WindowWidth = 128, 256
    return ds


def dcmcjpeg(ds: Dataset, syntax: str, work: Path) -> bytes:
    """`ds` compressed by DCMTK into `syntax` (one of DCMCJPEG), as Part-10 bytes."""
    work.mkdir(parents=True, exist_ok=True)
    src, dst = work / f"{ds.SOPInstanceUID}.in.dcm", work / f"{ds.SOPInstanceUID}.jpg.dcm"
    src.write_bytes(dataset_bytes(ds))
    res = run("dcmcjpeg", DCMCJPEG[syntax], src, dst)
    assert res.returncode == 0, res.stdout + res.stderr
    data = dst.read_bytes()
    got = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert str(got) == syntax
    return data


def compressed(ds: Dataset, syntax: str) -> bytes:
    """`ds` compressed by pydicom's encoders (JPEG-LS, JPEG 2000, RLE)."""
    ds = copy.deepcopy(ds)
    ds.compress(syntax, generate_instance_uid=False)
    return dataset_bytes(ds)


def colour_jpeg(base: Dataset, left: tuple[int, int, int], right: tuple[int, int, int]) -> bytes:
    """A JPEG baseline colour image, YBR_FULL_422 like an ultrasound: left half one colour,
    right half another."""
    ds = copy.deepcopy(base)
    rows, cols = int(ds.Rows), int(ds.Columns)
    rgb = np.zeros((rows, cols, 3), np.uint8)
    rgb[:, : cols // 2] = left
    rgb[:, cols // 2 :] = right
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, subsampling=1)  # 4:2:2
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for kw in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if kw in ds:
            delattr(ds, kw)
    ds.Modality = "US"
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return dataset_bytes(ds)


def seed_objects(store: ObjectStore, site: str, blobs: Iterable[bytes]) -> dict[str, bytes]:
    """Store Part-10 objects and journal them for `site`; {SOP Instance UID: bytes}."""
    out: dict[str, bytes] = {}
    rows = []
    for data in blobs:
        h = read_header(data)
        key = instance_key(h.study_uid, h.series_uid, h.sop_instance_uid)
        store.put(key, data, content_type="application/dicom")
        rows.append(CatalogRow(h, len(data), crc32c_bytes(data), key, site, time.time()))
        out[h.sop_instance_uid] = data
    append_rows(store, site, rows)
    return out
