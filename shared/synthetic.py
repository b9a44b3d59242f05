"""Synthetic DICOM studies for tests, benchmarks and demos (no download needed).

Pixel data is a cheap gradient so compression works; sizes are chosen by rows/columns.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
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
