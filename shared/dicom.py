"""DICOM header helpers: read only what the index needs, decode names by their character set."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from shared.errors import InvalidDataset, InvalidUID
from shared.uids import is_valid_uid

# Elements the index stores, by level. The catalog journal carries the same fields.
STUDY_TAGS = {
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "StudyInstanceUID": "study_uid",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "AccessionNumber": "accession_number",
    "StudyID": "study_id",
    "StudyDescription": "study_description",
    "ReferringPhysicianName": "referring_physician",
}
SERIES_TAGS = {
    "SeriesInstanceUID": "series_uid",
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
    "BodyPartExamined": "body_part",
    "SeriesDate": "series_date",
    "SeriesTime": "series_time",
}
INSTANCE_TAGS = {
    "SOPInstanceUID": "sop_instance_uid",
    "SOPClassUID": "sop_class_uid",
    "InstanceNumber": "instance_number",
    "Rows": "rows",
    "Columns": "columns",
    "NumberOfFrames": "number_of_frames",
    "SpecificCharacterSet": "specific_character_set",
}
_INT_FIELDS = {"series_number", "instance_number", "rows", "columns", "number_of_frames"}


@dataclass(frozen=True)
class Header:
    """The indexed attributes of one instance, strings decoded to Unicode."""

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


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def header_from_dataset(ds: Dataset, transfer_syntax: str) -> Header:
    """Extract indexed attributes; raises InvalidDataset/InvalidUID for what cannot be indexed."""
    values: dict[str, Any] = {"transfer_syntax": transfer_syntax}
    try:
        for tags in (STUDY_TAGS, SERIES_TAGS, INSTANCE_TAGS):
            for keyword, name in tags.items():
                raw = ds.get(keyword)
                if name in _INT_FIELDS:
                    values[name] = _int(raw)
                else:
                    values[name] = _text(raw)
    except Exception as exc:  # pydicom defers decoding: any element may fail here
        raise InvalidDataset(f"cannot decode the header: {exc}") from exc
    for name in ("sop_instance_uid", "sop_class_uid", "study_uid", "series_uid"):
        uid = values.get(name, "")
        if not uid:
            raise InvalidDataset(f"missing required attribute {name}")
        if not is_valid_uid(uid):
            raise InvalidUID(f"{name} is not a valid UID: {uid[:80]!r}")
    if not is_valid_uid(transfer_syntax):
        raise InvalidUID(f"transfer syntax is not a valid UID: {transfer_syntax[:80]!r}")
    return Header(**values)


def read_header(source: str | Path | BinaryIO | bytes) -> Header:
    """Parse a Part-10 file up to the pixel data and return its indexed attributes."""
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
