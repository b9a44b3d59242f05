"""edge/rewrite.py: a corrected object differs from the original only in the changed elements.

Real objects: the synthetic CT of shared/synthetic.py written in each native syntax by pydicom,
and pydicom's own test files (JPEG, RLE, deflated, big endian, character sets). Each check
compares the rewritten object with the original element by element (pydicom) and byte by byte
outside the changed elements.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from edge.rewrite import rewrite
from shared import acceptance
from shared.synthetic import StudySpec, iter_study


def _bytes(ds: Dataset, syntax: str | None = None) -> bytes:
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _rewritten(data: bytes, changes: dict[str, str]) -> bytes:
    out = io.BytesIO()
    assert rewrite(io.BytesIO(data), out, changes) is True
    new = out.getvalue()
    acceptance.check_buffer(new, len(new))  # still a well-formed object
    return new


def _others_equal(a: Dataset, b: Dataset, changed: set[str]) -> None:
    tags = {e.tag for e in a} | {e.tag for e in b}
    for tag in sorted(tags):
        keyword = pydicom.datadict.keyword_for_tag(tag)
        if keyword in changed or tag == 0x00080005:
            continue
        assert a.get(tag) == b.get(tag), keyword or hex(tag)


def _ct() -> Dataset:
    return next(iter_study(StudySpec(instances_per_series=1)))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_only_the_changed_elements_differ(syntax: str) -> None:
    data = _bytes(_ct(), syntax)
    changes = {"PatientName": "ROE^JANE", "PatientID": "NEW-ID-42", "StudyDescription": "HEAD"}
    new = _rewritten(data, changes)
    old_ds, new_ds = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(new))
    assert (new_ds.PatientName, new_ds.PatientID, new_ds.StudyDescription) == (
        "ROE^JANE",
        "NEW-ID-42",
        "HEAD",
    )
    _others_equal(old_ds, new_ds, set(changes))
    off = acceptance.check_buffer(data, len(data)).dataset_offset
    assert new[:off] == data[:off]  # preamble and File Meta, transfer syntax included
    assert new.endswith(data[data.index(b"\xe0\x7f\x10\x00") :])  # Pixel Data onwards as is
    assert new_ds.file_meta.TransferSyntaxUID == syntax


def test_a_missing_element_is_inserted_in_tag_order_and_group_lengths_follow() -> None:
    ds = _ct()
    del ds.AccessionNumber
    data = _bytes(ds, ExplicitVRLittleEndian)
    # pydicom drops group lengths when writing: put a (deprecated) (0010,0000) in by hand
    patient = [e for e in pydicom.dcmread(io.BytesIO(data)) if e.tag >> 16 == 0x0010]
    at = data.index(b"\x10\x00\x10\x00PN")
    length = sum(len(_bytes_of(e)) for e in patient)
    data = data[:at] + b"\x10\x00\x00\x00UL\x04\x00" + struct.pack("<L", length) + data[at:]
    assert pydicom.dcmread(io.BytesIO(data))[0x00100000].value == length
    new = _rewritten(data, {"AccessionNumber": "ACC9", "PatientName": "A^VERY^LONG^NAME^X"})
    new_ds = pydicom.dcmread(io.BytesIO(new))
    assert new_ds.AccessionNumber == "ACC9"
    tags = [e.tag for e in new_ds]
    assert tags == sorted(tags)
    patient = [e for e in new_ds if e.tag >> 16 == 0x0010 and e.tag & 0xFFFF]
    assert new_ds[0x00100000].value == sum(len(_bytes_of(e)) for e in patient)


def _bytes_of(elem: pydicom.DataElement) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem)
    return fp.getvalue()


def test_undefined_length_sequences_before_the_changed_elements_are_skipped() -> None:
    ds = _ct()
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.3"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    inner = Dataset()
    inner.CodeValue = "X"
    item.ConceptNameCodeSequence = Sequence([inner])
    ds.ReferencedStudySequence = Sequence([item, item])  # (0008,1110): before (0010,0010)
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        data = _bytes(ds, syntax)
        reread = pydicom.dcmread(io.BytesIO(data))
        for elem in reread.iterall():
            if elem.VR == "SQ":
                elem.is_undefined_length = True
                for it in elem.value:
                    it.is_undefined_length_sequence_item = True
        data = _bytes(reread)
        assert b"\xfe\xff\xdd\xe0" in data  # sequence delimiters present
        new = _rewritten(data, {"PatientName": "X^Y"})
        new_ds = pydicom.dcmread(io.BytesIO(new))
        assert new_ds.PatientName == "X^Y"
        assert new_ds.ReferencedStudySequence == reread.ReferencedStudySequence


COMPRESSED = [
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
]


@pytest.mark.parametrize("name", COMPRESSED)
def test_compressed_pixel_data_is_copied_not_recompressed(name: str) -> None:
    data = Path(str(get_testdata_file(name))).read_bytes()
    new = _rewritten(data, {"PatientName": "CORRECTED^NAME", "StudyDate": "20200202"})
    old_ds, new_ds = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(new))
    assert new_ds.file_meta.TransferSyntaxUID == old_ds.file_meta.TransferSyntaxUID
    assert new_ds.PixelData == old_ds.PixelData
    assert new_ds.StudyDate == "20200202"
    _others_equal(old_ds, new_ds, {"PatientName", "StudyDate"})


def test_big_endian_and_deflated_objects() -> None:
    for name in ("MR_small_bigendian.dcm", "image_dfl.dcm"):
        data = Path(str(get_testdata_file(name))).read_bytes()
        new = _rewritten(data, {"PatientID": "BE-1"})
        old_ds, new_ds = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(new))
        assert new_ds.PatientID == "BE-1"
        assert new_ds.file_meta.TransferSyntaxUID == old_ds.file_meta.TransferSyntaxUID
        _others_equal(old_ds, new_ds, {"PatientID"})
    assert ExplicitVRBigEndian in {
        pydicom.dcmread(get_testdata_file("MR_small_bigendian.dcm")).file_meta.TransferSyntaxUID
    }


def _latin1() -> bytes:
    ds = _ct()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.StudyDescription = "Thorax Übersicht"
    other = Dataset()
    other.PatientName = "Ærø^Åse"
    ds.OtherPatientIDsSequence = Sequence([other])
    return _bytes(ds, ExplicitVRLittleEndian)


def test_a_value_the_character_set_holds_is_written_in_it() -> None:
    data = _latin1()
    new = _rewritten(data, {"PatientName": "Dupont^Zoé"})
    assert b"\x0a\x00Dupont^Zo\xe9" in new  # length 10, Latin-1
    new_ds = pydicom.dcmread(io.BytesIO(new))
    assert new_ds.SpecificCharacterSet == "ISO_IR 100"
    assert new_ds.PatientName == "Dupont^Zoé"
    _others_equal(pydicom.dcmread(io.BytesIO(data)), new_ds, {"PatientName"})


def test_a_value_it_cannot_hold_switches_the_object_to_utf8() -> None:
    data = _latin1()
    new = _rewritten(data, {"PatientName": "Łukasz^Żółw"})
    old_ds, new_ds = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(new))
    assert new_ds.SpecificCharacterSet == "ISO_IR 192"
    assert new_ds.PatientName == "Łukasz^Żółw"
    # every other text value says the same in the new character set, nested ones too
    assert new_ds.StudyDescription == "Thorax Übersicht"
    assert new_ds.OtherPatientIDsSequence[0].PatientName == "Ærø^Åse"
    assert "Ærø".encode() in new and "Übersicht".encode() in new
    assert new_ds.PixelData == old_ds.PixelData
    off = acceptance.check_buffer(data, len(data)).dataset_offset
    assert new[:off] == data[:off]


def test_default_repertoire_gets_utf8_for_non_ascii() -> None:
    data = _bytes(_ct(), ExplicitVRLittleEndian)
    new = _rewritten(data, {"PatientName": "Dvořák^Antonín"})
    new_ds = pydicom.dcmread(io.BytesIO(new))
    assert (new_ds.SpecificCharacterSet, new_ds.PatientName) == ("ISO_IR 192", "Dvořák^Antonín")


def test_a_rerun_finds_the_values_already_there() -> None:
    data = _latin1()
    changes = {"PatientName": "Łukasz^Żółw", "AccessionNumber": ""}
    new = _rewritten(data, changes)
    assert rewrite(io.BytesIO(new), io.BytesIO(), changes) is False
    plain = _bytes(_ct(), ExplicitVRLittleEndian)
    once = _rewritten(plain, {"PatientID": "Q"})
    assert rewrite(io.BytesIO(once), io.BytesIO(), {"PatientID": "Q"}) is False


def test_large_objects_stream_through_a_small_head() -> None:
    ds = _ct()
    ds.Rows = ds.Columns = 1024
    ds.PixelData = bytes(1024 * 1024 * 2)
    data = _bytes(ds, ExplicitVRLittleEndian)

    class Counting(io.BytesIO):
        largest = 0

        def read(self, n: int | None = -1) -> bytes:
            out = super().read(n)
            Counting.largest = max(Counting.largest, len(out))
            return out

    out = io.BytesIO()
    assert rewrite(Counting(data), out, {"PatientName": "BIG^ONE"})
    assert Counting.largest <= 1024 * 1024  # never the whole object in one read
    assert pydicom.dcmread(io.BytesIO(out.getvalue())).PixelData == ds.PixelData
