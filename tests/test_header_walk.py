"""shared.headerwalk: the indexed attributes read without pydicom equal pydicom's, and every
file it is not certain about goes to pydicom (on pydicom's own test files, synthetic studies in
both little-endian syntaxes, and crafted framing)."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from shared import dicom
from shared.errors import PacsError
from shared.synthetic import StudySpec, write_study


def _pydicom(path: Path) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=1024, force=False)
            ts = ds.file_meta.get("TransferSyntaxUID")
            return dicom.header_from_dataset(ds, str(ts), fast=False)
        except PacsError as exc:
            return type(exc)
        except Exception:
            return "unreadable"


def _walked(path: Path) -> object:
    try:
        return dicom.walked_header(path)
    except PacsError as exc:
        return type(exc)


@pytest.mark.parametrize("path", get_testdata_files("*.dcm"), ids=lambda p: Path(p).name)
def test_walked_header_equals_pydicom_on_pydicom_test_files(path: str) -> None:
    walked = _walked(Path(path))
    if walked is None:
        return  # not certain: pydicom's path answers
    assert walked == _pydicom(Path(path))


def test_the_walk_answers_for_most_test_files() -> None:
    """So the comparison above is not vacuous."""
    answered = [p for p in get_testdata_files("*.dcm") if _walked(Path(p)) is not None]
    assert len(answered) >= 20, answered


@pytest.mark.parametrize("implicit", [False, True])
def test_synthetic_studies_take_the_walk(tmp_path: Path, implicit: bool) -> None:
    files = write_study(StudySpec(instances_per_series=3, rows=64, columns=64), tmp_path)
    for f in files:
        if implicit:
            ds = pydicom.dcmread(f)
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
            ds.save_as(f, enforce_file_format=True)
        walked = dicom.walked_header(f)
        assert walked is not None
        assert walked == _pydicom(f)
        assert walked.transfer_syntax == (
            "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
        )


def _rewrite(path: Path, ds: pydicom.Dataset) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_what_the_walk_leaves_to_pydicom(tmp_path: Path) -> None:
    base = write_study(StudySpec(instances_per_series=1, rows=8, columns=8), tmp_path / "s")[0]
    ds = pydicom.dcmread(base)
    cases = {}
    ds1 = ds.copy()
    ds1.PatientName = "Müller^Hans"
    ds1.SpecificCharacterSet = "ISO_IR 100"
    cases["non-ASCII name"] = ds1
    ds2 = ds.copy()
    ds2.StudyDescription = "A\\B"
    cases["multi-valued"] = ds2
    ds3 = ds.copy()
    ds3.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    cases["ISO 2022"] = ds3
    for name, d in cases.items():
        f = _rewrite(tmp_path / f"{name}.dcm", d)
        assert dicom.walked_header(f) is None, name
        assert dicom.read_header(f) == _pydicom(f), name  # read_header falls back
    # an element whose length overruns the file
    raw = bytearray(base.read_bytes())
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(bytes(raw[: len(raw) // 2]))
    assert dicom.walked_header(cut) is None


def test_sequences_of_undefined_length_are_skipped(tmp_path: Path) -> None:
    """An undefined-length sequence (with undefined-length items) before the wanted tags."""
    f = write_study(StudySpec(instances_per_series=1, rows=8, columns=8), tmp_path)[0]
    ds = pydicom.dcmread(f)
    item = pydicom.Dataset()
    item.CodeValue = "X"
    item.CodingSchemeDesignator = "99"
    ds.ProcedureCodeSequence = [item, item]
    out = tmp_path / "sq.dcm"
    ds.save_as(out, enforce_file_format=True)
    data = bytearray(out.read_bytes())
    # rewrite the sequence and its items to undefined length (explicit VR LE)
    tag = struct.pack("<HH", 0x0008, 0x1032) + b"SQ\0\0"
    at = data.index(tag)
    (length,) = struct.unpack_from("<I", data, at + 8)
    body = bytes(data[at + 12 : at + 12 + length])
    items = b""
    pos = 0
    while pos < len(body):
        (ilen,) = struct.unpack_from("<I", body, pos + 4)
        items += b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body[pos + 8 : pos + 8 + ilen]
        items += b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        pos += 8 + ilen
    new = tag + b"\xff\xff\xff\xff" + items + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    data[at : at + 12 + length] = new
    out.write_bytes(bytes(data))
    walked = dicom.walked_header(out)
    assert walked is not None and walked == _pydicom(out)
