"""Synthetic DICOM studies for tests, benchmarks and demos (no download needed).

Pixel data is a cheap gradient so compression works; sizes are chosen by rows/columns.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

ROOT = "1.2.826.0.1.3680043.10.1255."  # hpacs test UIDs


def uid() -> str:
    return generate_uid(prefix=ROOT)


@dataclass
class StudySpec:
    patient_id: str = "P0001"
    patient_name: str = "DOE^JOHN"
    patient_birth_date: str = "19700101"
    patient_sex: str = "M"
    study_date: str = "20240115"
    study_time: str = "101500"
    accession_number: str = "A0001"
    study_description: str = "CT CHEST"
    modality: str = "CT"
    body_part: str = "CHEST"
    series_count: int = 1
    instances_per_series: int = 3
    rows: int = 64
    columns: int = 64
    specific_character_set: str = ""
    study_uid: str = ""
    sop_class_uid: str = str(CTImageStorage)


def make_instance(
    spec: StudySpec,
    study_uid: str,
    series_uid: str,
    series_number: int,
    instance_number: int,
    seed: int = 0,
) -> Dataset:
    ds = Dataset()
    if spec.specific_character_set:
        ds.SpecificCharacterSet = spec.specific_character_set
    ds.SOPClassUID = spec.sop_class_uid
    ds.SOPInstanceUID = uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = spec.patient_id
    ds.PatientName = spec.patient_name
    ds.PatientBirthDate = spec.patient_birth_date
    ds.PatientSex = spec.patient_sex
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.SeriesDate = spec.study_date
    ds.SeriesTime = spec.study_time
    ds.AccessionNumber = spec.accession_number
    ds.StudyID = "1"
    ds.StudyDescription = spec.study_description
    ds.SeriesDescription = f"{spec.study_description} series {series_number}"
    ds.ReferringPhysicianName = "REF^DOC"
    ds.Modality = spec.modality
    ds.BodyPartExamined = spec.body_part
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 512
    ds.WindowWidth = 1024
    rng = np.random.default_rng(seed or instance_number)
    base = np.add.outer(np.arange(spec.rows), np.arange(spec.columns)).astype(np.uint16)
    noise = rng.integers(0, 16, size=(spec.rows, spec.columns), dtype=np.uint16)
    ds.PixelData = ((base * 4 + noise + instance_number) % 4096).astype(np.uint16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def iter_study(spec: StudySpec) -> Iterator[Dataset]:
    study_uid = spec.study_uid or uid()
    for s in range(1, spec.series_count + 1):
        series_uid = uid()
        for i in range(1, spec.instances_per_series + 1):
            yield make_instance(spec, study_uid, series_uid, s, i)


def write_study(spec: StudySpec, folder: str | Path) -> list[Path]:
    """Write a study as Part-10 files; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in iter_study(spec):
        p = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def random_name(rng: random.Random) -> str:
    last = rng.choice(["SMITH", "JONES", "MARTIN", "GARCIA", "MÜLLER", "DUBOIS", "ROSSI"])
    first = rng.choice(["ANNA", "JOHN", "MARIE", "LUCA", "SOFIA", "PAUL"])
    return f"{last}^{first}"


# ---- synthetic catalog journals (tests/test_catalog_replicas.py, bench/catalog.py) ----------

_PREFIXES = ["SMI", "JON", "JOH", "MAR", "GAR", "MUL", "ROS", "DUB", "BRO", "WIL", "AND", "TAY"]
_SUFFIXES = ["TH", "THSON", "LEY", "RNOV", "ES", "NSON", "ANSSON", "TIN", "TINEZ", "CIA", "LER",
             "LERMANN", "SI", "SETTI", "OIS", "WN", "WNING", "SON", "ERSEN", "LOR"]  # fmt: skip
_FIRST = ["ANNA", "JOHN", "MARIE", "LUCA", "SOFIA", "PAUL", "EMMA", "NOAH", "LINA", "OMAR"]
# (modality, share, description, series per study)
_MODALITIES = [
    ("CT", 35, "CT THORAX", 4), ("MR", 25, "MR BRAIN", 6), ("CR", 12, "CHEST PA", 1),
    ("DX", 8, "HAND LEFT", 2), ("US", 10, "US ABDOMEN", 2), ("MG", 5, "MAMMOGRAPHY", 4),
    ("PT", 3, "PET CT WHOLE BODY", 3), ("NM", 2, "BONE SCAN", 2),
]  # fmt: skip
_ROW_TEMPLATE = {
    "transfer_syntax": str(ExplicitVRLittleEndian), "issuer_of_patient_id": "",
    "patient_sex": "F", "study_time": "101500", "study_id": "1",
    "referring_physician": "REF^DOC", "body_part": "", "series_time": "101500", "rows": 512,
    "columns": 512, "number_of_frames": None, "specific_character_set": "", "size": 525000,
    "crc32c": "00000000", "received_at": 1.7e9, "calling_ae": "", "source": "dimse", "v": 1,
    "sop_class_uid": str(CTImageStorage),
}  # fmt: skip


def catalog_rows(n: int, sites: int = 20, seed: int = 1) -> Iterator[tuple[str, dict[str, object]]]:
    """(site, journal row) pairs for n instances with a PACS's distributions: ~100 instances per
    study in 1-6 series by modality, 1-5 studies per patient, surnames sharing prefixes, study
    dates over ten years, studies spread over `sites` sites (some larger than others). Cheap:
    no DICOM object behind the rows (object keys are only names)."""
    rng = random.Random(seed)
    weights = [m[1] for m in _MODALITIES]
    site_weights = [1.0 / (1 + i % 7) for i in range(sites)]
    made = study = patient = 0
    while made < n:
        patient += 1
        name = f"{rng.choice(_PREFIXES)}{rng.choice(_SUFFIXES)}^{rng.choice(_FIRST)}"
        birth = f"19{rng.randrange(30, 99)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5))):
            study += 1
            modality, _, description, n_series = rng.choices(_MODALITIES, weights)[0]
            day = rng.randrange(3650)
            date = f"{2015 + day // 365}{1 + day % 365 // 31:02d}{1 + day % 31 % 28:02d}"
            site = f"site{rng.choices(range(sites), site_weights)[0] + 1:02d}"
            per_series = max(1, int(rng.gauss(100, 40)) // n_series)
            study_uid = f"{ROOT}1.{study}"
            base = dict(
                _ROW_TEMPLATE, study_uid=study_uid, patient_id=f"P{patient:08d}",
                patient_name=name, patient_birth_date=birth, study_date=date,
                accession_number=f"A{study:09d}", study_description=description,
                modality=modality,
            )  # fmt: skip
            for s in range(1, n_series + 1):
                series_uid = f"{ROOT}2.{study}.{s}"
                for i in range(1, per_series + 1):
                    if made >= n:
                        return
                    sop = f"{ROOT}3.{study}.{s}.{i}"
                    key = f"instances/{study_uid}/{series_uid}/{sop}.dcm"
                    made += 1
                    yield site, dict(
                        base, series_uid=series_uid, series_number=s, series_date=date,
                        series_description=f"{description} {s}", instance_number=i,
                        sop_instance_uid=sop, object_key=key, site=site,
                    )  # fmt: skip


def write_journals(
    put: Callable[[str, bytes], object],
    rows: Iterable[tuple[str, dict[str, object]]],
    batch: int = 1000,
) -> dict[str, int]:
    """Write (site, row) pairs as each site's catalog objects of `batch` rows through
    `put(key, gzip bytes)`; returns the objects written per site."""
    import gzip
    import json

    from shared.keys import catalog_key

    buffers: dict[str, list[str]] = {}
    objects: dict[str, int] = {}

    def flush(site: str) -> None:
        objects[site] = objects.get(site, 0) + 1
        data = gzip.compress(("\n".join(buffers.pop(site)) + "\n").encode(), 1, mtime=0)
        put(catalog_key(site, objects[site]), data)

    for site, row in rows:
        buf = buffers.setdefault(site, [])
        buf.append(json.dumps(row, separators=(",", ":")))
        if len(buf) >= batch:
            flush(site)
    for site in list(buffers):
        flush(site)
    return objects
