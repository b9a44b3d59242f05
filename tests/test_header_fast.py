"""The header fast path (ingest performance) gives exactly what pydicom's conversion gives.

Each character set case checks three things: the fast path is taken exactly where it applies
(ASCII-compatible sets), both paths agree, and the decoded name is the expected Unicode (so a
case cannot pass by comparing one wrong answer with itself).
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from shared import dicom
from shared.errors import PacsError
from shared.synthetic import StudySpec, iter_study, write_study
from tests.support.edge import encoded_dataset, part10_with_raw_dataset

PLACEHOLDER = "PLACEHOLDER^NAME"


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True, defer_size=1024, force=True)


def _both(path: Path) -> tuple[object, object]:
    """(fast, slow) results of header_from_dataset on freshly read copies of one file.

    Fails when the file cannot be read: a pair of Nones would compare equal and prove nothing.
    """
    results: list[object] = []
    for fast in (True, False):
        ds = _read(path)
        try:
            results.append(dicom.header_from_dataset(ds, "1.2.840.10008.1.2.1", fast=fast))
        except PacsError as exc:
            results.append(type(exc))
    return results[0], results[1]


def test_fast_path_is_taken_for_plain_ascii(tmp_path: Path) -> None:
    f = write_study(StudySpec(instances_per_series=1), tmp_path)[0]
    ds = pydicom.dcmread(f, stop_before_pixels=True, defer_size=1024)
    assert dicom._fast_ok(ds) is not None


def _with_raw_name(tmp_path: Path, charset: list[str], name_bytes: bytes) -> Path:
    """A file whose Patient's Name bytes are written by hand (pydicom is not the encoder)."""
    ds = next(iter_study(StudySpec(instances_per_series=1, patient_name=PLACEHOLDER)))
    ds.SpecificCharacterSet = charset
    data = encoded_dataset(ds)
    old = b"\x10\x00\x10\x00PN" + struct.pack("<H", len(PLACEHOLDER)) + PLACEHOLDER.encode()
    name_bytes += b" " * (len(name_bytes) % 2)
    new = b"\x10\x00\x10\x00PN" + struct.pack("<H", len(name_bytes)) + name_bytes
    assert data.count(old) == 1
    return part10_with_raw_dataset(tmp_path / "x.dcm", data.replace(old, new))


# PS3.5 Annex H.3.1: the single-byte and JIS X 0208 components of a Japanese name, written
# byte by byte (ESC $ B selects JIS X 0208, ESC ( B returns to ASCII; 山 = 3B33, 田 = 4544,
# 太 = 4240, 郎 = 4F3A).
IR87_NAME = (
    b"Yamada^Tarou="
    + b"\x1b\x24\x42"
    + b"\x3b\x33\x45\x44"
    + b"\x1b\x28\x42"
    + b"^"
    + b"\x1b\x24\x42"
    + b"\x42\x40\x4f\x3a"
    + b"\x1b\x28\x42"
)


@pytest.mark.parametrize(
    ("charset", "raw", "name", "fast_taken"),
    [
        ([], b"DOE^JOHN", "DOE^JOHN", True),
        (["ISO_IR 100"], "MÜLLER^ANNA".encode("latin-1"), "MÜLLER^ANNA", True),
        (["ISO_IR 192"], "Dubois^Marie=デュボア".encode(), "Dubois^Marie=デュボア", True),
        (["ISO_IR 144"], "Иванов^Иван".encode("iso8859_5"), "Иванов^Иван", True),
        (["", "ISO 2022 IR 87"], IR87_NAME, "Yamada^Tarou=山田^太郎", False),
    ],
    ids=["default", "ISO_IR 100", "ISO_IR 192", "ISO_IR 144", "ISO 2022 IR 87"],
)
def test_fast_path_equals_pydicom_on_character_sets(
    tmp_path: Path, charset: list[str], raw: bytes, name: str, fast_taken: bool
) -> None:
    path = _with_raw_name(tmp_path, charset, raw)
    assert (dicom._fast_ok(_read(path)) is not None) is fast_taken
    fast, slow = _both(path)
    assert isinstance(fast, dicom.Header), fast
    assert fast == slow
    assert fast.patient_name == name


def _readable(files: list[Path]) -> list[Path]:
    out = []
    for f in files:
        try:
            _read(f)
        except Exception:
            continue
        out.append(f)
    return out


def test_fast_path_equals_pydicom_on_pydicom_test_files() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = [Path(p) for p in get_testdata_files("*") if p.endswith((".dcm", ".DCM"))]
    readable = _readable(files)
    assert len(files) > 30 and len(readable) > 30
    headers = 0
    for f in readable:
        fast, slow = _both(f)
        assert fast == slow, f.name
        headers += isinstance(fast, dicom.Header)
    assert headers > 20  # compared as decoded headers, not only as two refusals
