"""shared.intake: the acceptance rule and the indexed header from one pass. The header taken
on the acceptance scan equals pydicom's on pydicom's own test files (every transfer syntax it
ships) and on synthetic objects; what it is not certain about is read by pydicom."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from shared import acceptance, dicom, intake
from shared.errors import PacsError
from shared.synthetic import StudySpec, write_study

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"


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


def _raw(path: Path) -> object:
    """The header from the collected elements alone (None: left to pydicom)."""
    try:
        accepted = _accepted(path)
    except PacsError:
        return "refused"
    if accepted.elements is None or accepted.transfer_syntax not in intake.RAW_HEADER_SYNTAXES:
        return None
    try:
        return dicom.header_from_raw(accepted.transfer_syntax, accepted.elements)
    except PacsError as exc:
        return type(exc)


def _accepted(path: Path) -> acceptance.Accepted:
    return intake.accept(path)


@pytest.mark.parametrize("path", get_testdata_files("*.dcm"), ids=lambda p: Path(p).name)
def test_collected_header_equals_pydicom_on_pydicom_test_files(path: str, tmp_path: Path) -> None:
    raw = _raw(Path(path))
    if raw is None or raw == "refused":
        return  # not certain (pydicom answers), or refused by the acceptance rule
    accepted = _accepted(Path(path))
    reference = Path(path)
    if not accepted.part10:  # a bare dataset is stored (and read by pydicom) as Part-10
        reference = tmp_path / "part10.dcm"
        with open(reference, "wb") as out:
            acceptance.write_part10(path, accepted, out)
    assert raw == _pydicom(reference)


def test_the_collected_header_answers_for_most_test_files_and_compressed_ones() -> None:
    """So the comparison above is not vacuous, and covers encapsulated syntaxes."""
    answered = {p: _raw(Path(p)) for p in get_testdata_files("*.dcm")}
    answered = {p: h for p, h in answered.items() if isinstance(h, dicom.Header)}
    assert len(answered) >= 20, list(answered)
    syntaxes = {h.transfer_syntax for h in answered.values()}  # type: ignore[union-attr]
    assert len(syntaxes - {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}) >= 3, syntaxes


def test_header_falls_back_to_pydicom_for_what_it_is_not_certain_of(tmp_path: Path) -> None:
    base = write_study(StudySpec(instances_per_series=1, rows=8, columns=8), tmp_path / "s")[0]
    ds = pydicom.dcmread(base)
    ds.PatientName = "Müller^Hans"
    ds.SpecificCharacterSet = "ISO_IR 100"
    f = tmp_path / "latin1.dcm"
    ds.save_as(f, enforce_file_format=True)
    accepted = intake.accept(f)
    assert dicom.header_from_raw(accepted.transfer_syntax, accepted.elements or {}) is None
    assert intake.header(accepted, f) == _pydicom(f)
    assert intake.header(accepted, f).patient_name == "Müller^Hans"


def test_an_open_descriptor_reads_like_the_path(tmp_path: Path) -> None:
    f = write_study(StudySpec(instances_per_series=1, rows=64, columns=64), tmp_path)[0]
    fd = os.open(f, os.O_RDONLY)
    try:
        by_fd = intake.accept(f, fd)
    finally:
        os.close(fd)
    assert by_fd == intake.accept(f)
    assert intake.header(by_fd, f) == _pydicom(f)


def test_out_of_order_top_level_tags_are_left_to_pydicom(tmp_path: Path) -> None:
    f = write_study(StudySpec(instances_per_series=1, rows=8, columns=8), tmp_path)[0]
    data = bytearray(f.read_bytes())
    accepted = intake.accept(f)
    assert accepted.elements is not None
    # swap the tags of two adjacent top-level elements of equal VR/length: still well formed
    # (the acceptance rule does not ask for order), but no longer ascending
    a = data.index(b"\x10\x00\x10\x00PN")  # PatientName
    b = data.index(b"\x10\x00\x20\x00LO")  # PatientID
    data[a : a + 4], data[b : b + 4] = data[b : b + 4], data[a : a + 4]
    out = tmp_path / "swapped.dcm"
    out.write_bytes(bytes(data))
    assert intake.accept(out).elements is None


def test_compressed_synthetic_instance_takes_the_one_pass(tmp_path: Path) -> None:
    f = write_study(StudySpec(instances_per_series=1, rows=16, columns=16), tmp_path)[0]
    ds = pydicom.dcmread(f)
    ds.compress(pydicom.uid.RLELossless)
    out = tmp_path / "rle.dcm"
    ds.save_as(out, enforce_file_format=True)
    accepted = intake.accept(out)
    got = dicom.header_from_raw(accepted.transfer_syntax, accepted.elements or {})
    assert got is not None and got == _pydicom(out)
    assert got.transfer_syntax == pydicom.uid.RLELossless
