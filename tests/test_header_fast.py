"""The header fast path (ingest performance) gives exactly what pydicom's conversion gives."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from shared import dicom
from shared.errors import PacsError
from shared.synthetic import StudySpec, write_study


def _both(path: Path) -> tuple[object, object]:
    """(fast, slow) results of header_from_dataset on freshly read copies of one file."""
    results = []
    for fast in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=1024, force=True)
            except Exception:
                return None, None
            try:
                results.append(dicom.header_from_dataset(ds, "1.2.840.10008.1.2.1", fast=fast))
            except PacsError as exc:
                results.append(type(exc))
    return results[0], results[1]


def test_fast_path_is_taken_for_plain_ascii(tmp_path: Path) -> None:
    f = write_study(StudySpec(instances_per_series=1), tmp_path)[0]
    ds = pydicom.dcmread(f, stop_before_pixels=True, defer_size=1024)
    assert dicom._fast_ok(ds) is not None


@pytest.mark.parametrize(
    "charset,name",
    [
        ("", "DOE^JOHN"),
        ("ISO_IR 100", "MÜLLER^ANNA"),
        ("ISO_IR 192", "Dubois^Marie=デュボア"),
        ("ISO 2022 IR 87", "Yamada^Tarou=山田^太郎"),
        ("ISO_IR 144", "Иванов^Иван"),
    ],
)
def test_fast_path_equals_pydicom_on_character_sets(
    tmp_path: Path, charset: str, name: str
) -> None:
    try:
        f = write_study(
            StudySpec(instances_per_series=1, specific_character_set=charset, patient_name=name),
            tmp_path,
        )[0]
    except Exception as exc:  # a charset pydicom cannot encode is not this test's subject
        pytest.skip(f"pydicom cannot encode {charset}: {exc}")
    fast, slow = _both(f)
    assert fast == slow


def test_fast_path_equals_pydicom_on_pydicom_test_files() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = [Path(p) for p in get_testdata_files("*") if p.endswith((".dcm", ".DCM"))]
    assert len(files) > 30
    compared = 0
    for f in files:
        fast, slow = _both(f)
        assert fast == slow, f.name
        compared += fast is not None
    assert compared > 20
