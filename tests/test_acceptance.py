"""The acceptance rule (shared/acceptance.py), table-driven over hand-built element bytes.

Every refused case names the rule it breaks; every accepted case is a well-formed variant the
rule must not refuse. The doors (C-STORE, STOW, hot folder, import) have their own tests in
tests/test_acceptance_doors.py.
"""

from __future__ import annotations

import io
import resource
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from shared import acceptance
from shared.dicom import read_header
from shared.errors import InvalidDataset
from shared.synthetic import StudySpec, iter_study
from tests.support.edge import encoded_dataset, part10_with_raw_dataset

JPEG = "1.2.840.10008.1.2.4.50"
LONG = {b"OB", b"OW", b"SQ", b"UN", b"UT"}
UNDEFINED = 0xFFFFFFFF


def el(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element."""
    if vr in LONG:
        return struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def open_el(tag: int, vr: bytes, length: int = UNDEFINED) -> bytes:
    """An element header only (undefined length, or a length the bytes do not back)."""
    return struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, vr, length)


def item(length: int = UNDEFINED) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, length)


ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
UIDS = el(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0") + el(0x00080018, b"UI", b"1.2.3.4\0")
TEXT = el(0x0040A040, b"CS", b"TEXT")


def us(tag: int, value: int) -> bytes:
    return el(tag, b"US", struct.pack("<H", value))


def image(rows: int, cols: int, bits: int = 8, frames: bytes = b"", spp: int = 1) -> bytes:
    out = us(0x00280002, spp)
    if frames:
        out += el(0x00280008, b"IS", frames)
    return out + us(0x00280010, rows) + us(0x00280011, cols) + us(0x00280100, bits)


def pixels(n: int) -> bytes:
    return el(0x7FE00010, b"OB", b"\x01" * n)


def fragments(*parts: bytes, bot: bytes = b"") -> bytes:
    body = item(len(bot)) + bot + b"".join(item(len(p)) + p for p in parts)
    return open_el(0x7FE00010, b"OB") + body + SEQ_END


def nested(depth: int) -> bytes:
    return (open_el(0x0040A730, b"SQ") + item()) * depth + TEXT + (ITEM_END + SEQ_END) * depth


ACCEPTED = [
    ("native exact", UIDS + image(2, 2) + pixels(4), ExplicitVRLittleEndian),
    ("odd length plus its pad byte", UIDS + image(3, 3) + pixels(10), ExplicitVRLittleEndian),
    ("odd length without pad", UIDS + image(3, 3) + pixels(9), ExplicitVRLittleEndian),
    ("two frames", UIDS + image(2, 2, frames=b"2 ") + pixels(8), ExplicitVRLittleEndian),
    ("1 bit, 9 pixels in 2 bytes", UIDS + image(3, 3, bits=1) + pixels(2), ExplicitVRLittleEndian),
    ("RGB 16 bit", UIDS + image(2, 2, bits=16, spp=3) + pixels(24), ExplicitVRLittleEndian),
    ("no pixel data", UIDS + TEXT, ExplicitVRLittleEndian),
    ("undefined-length sequence, closed", UIDS + nested(3), ExplicitVRLittleEndian),
    ("64 levels of sequences", UIDS + nested(64), ExplicitVRLittleEndian),
    (
        "defined-length sequence and item",
        UIDS + el(0x0040A730, b"SQ", item(len(TEXT)) + TEXT + item(0)),
        ExplicitVRLittleEndian,
    ),
    (
        "UN of undefined length read as implicit VR items",
        UIDS
        + open_el(0x00091010, b"UN")
        + item()
        + struct.pack("<HHI", 0x0009, 0x1011, 2)
        + b"ab"
        + ITEM_END
        + SEQ_END,
        ExplicitVRLittleEndian,
    ),
    ("trailing padding element", UIDS + el(0xFFFCFFFC, b"OB", b"\0" * 6), ExplicitVRLittleEndian),
    ("encapsulated, empty offset table", UIDS + image(2, 2) + fragments(b"abcd"), JPEG),
    (
        "encapsulated, offset table and two frames",
        UIDS + image(2, 2, frames=b"2") + fragments(b"ab", b"cdef", bot=b"\0" * 8),
        JPEG,
    ),
    (
        "bytes resembling a delimiter inside a fragment",
        UIDS + image(2, 2) + fragments(SEQ_END + b"xy"),
        JPEG,
    ),
]

REFUSED = [
    (
        "UT declaring 0xFFFFFFF0 bytes with 3 present",
        UIDS + open_el(0x0040A160, b"UT", 0xFFFFFFF0) + b"abc",
        ExplicitVRLittleEndian,
        "(0040,A160) TextValue at offset",
    ),
    ("header cut short", UIDS + b"\x08\x00\x20\x00DA", ExplicitVRLittleEndian, "6 stray bytes"),
    (
        "sequence never closed",
        UIDS + open_el(0x0040A730, b"SQ") + item() + TEXT + ITEM_END,
        ExplicitVRLittleEndian,
        "sequence not closed",
    ),
    (
        "item never closed",
        UIDS + open_el(0x0040A730, b"SQ") + item() + TEXT,
        ExplicitVRLittleEndian,
        "item not closed",
    ),
    (
        "item longer than its sequence",
        UIDS + el(0x0040A730, b"SQ", item(20) + TEXT),
        ExplicitVRLittleEndian,
        "sequence item at offset",
    ),
    (
        "item delimiter at the top level",
        UIDS + ITEM_END,
        ExplicitVRLittleEndian,
        "where a data element was expected",
    ),
    (
        "element where an item belongs",
        UIDS + open_el(0x0040A730, b"SQ") + TEXT,
        ExplicitVRLittleEndian,
        "where a sequence item was expected",
    ),
    (
        "undefined length on a text element",
        UIDS + open_el(0x0040A160, b"UT") + b"abcd" + SEQ_END,
        ExplicitVRLittleEndian,
        "has undefined length",
    ),
    ("invalid VR", UIDS + b"\x08\x00\x20\x00zz\x02\x00ab", ExplicitVRLittleEndian, "invalid VR"),
    (
        "implicit VR data labelled explicit",
        struct.pack("<HHI", 0x0008, 0x0016, 8) + b"1.2.3.4\0",
        ExplicitVRLittleEndian,
        "not in its declared transfer syntax",
    ),
    ("pixel data short", UIDS + image(2, 2) + pixels(2), ExplicitVRLittleEndian, "need 4"),
    ("pixel data too long", UIDS + image(2, 2) + pixels(6), ExplicitVRLittleEndian, "need 4"),
    ("more than one pad byte", UIDS + image(3, 3) + pixels(11), ExplicitVRLittleEndian, "need 9"),
    (
        "frames missing from the length",
        UIDS + image(2, 2, frames=b"3") + pixels(8),
        ExplicitVRLittleEndian,
        "need 12",
    ),
    ("pixel data without rows", UIDS + pixels(4), ExplicitVRLittleEndian, "without Rows"),
    (
        "frames not a number",
        UIDS + image(2, 2, frames=b"1A") + pixels(4),
        ExplicitVRLittleEndian,
        "not an integer",
    ),
    (
        "fragments in a native syntax",
        UIDS + image(2, 2) + fragments(b"abcd"),
        ExplicitVRLittleEndian,
        "undefined length in a native",
    ),
    (
        "defined length in an encapsulated syntax",
        UIDS + image(2, 2) + pixels(4),
        JPEG,
        "defined length in an encapsulated",
    ),
    (
        "fragments not closed",
        UIDS + image(2, 2) + open_el(0x7FE00010, b"OB") + item(0) + item(4) + b"abcd",
        JPEG,
        "not closed by a sequence delimiter",
    ),
    (
        "fragment beyond the object",
        UIDS + image(2, 2) + open_el(0x7FE00010, b"OB") + item(0) + item(100) + b"abcd",
        JPEG,
        "fragment 1 of Pixel Data",
    ),
    (
        "fragment of undefined length",
        UIDS + image(2, 2) + open_el(0x7FE00010, b"OB") + item(0) + item() + b"abcd" + SEQ_END,
        JPEG,
        "declares 4294967295",
    ),
    (
        "offset table only",
        UIDS + image(2, 2) + open_el(0x7FE00010, b"OB") + item(0) + SEQ_END,
        JPEG,
        "holds no fragment",
    ),
    (
        "offset table not a multiple of 4",
        UIDS + image(2, 2) + fragments(b"abcd", bot=b"\0\0\0"),
        JPEG,
        "not a multiple of 4",
    ),
    (
        "element among the fragments",
        UIDS + image(2, 2) + open_el(0x7FE00010, b"OB") + item(0) + TEXT + SEQ_END,
        JPEG,
        "where the fragment 1 item was expected",
    ),
    ("65 levels of sequences", UIDS + nested(65), ExplicitVRLittleEndian, "nested deeper than 64"),
    ("1,000 levels of sequences", UIDS + nested(1000), ExplicitVRLittleEndian, "nested deeper"),
]


def _part10(tmp_path: Path, dataset: bytes, ts: str) -> Path:
    return part10_with_raw_dataset(tmp_path / "x.dcm", dataset, transfer_syntax=ts)


@pytest.mark.parametrize(("name", "dataset", "ts"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_well_formed_objects_are_accepted(tmp_path: Path, name: str, dataset: bytes, ts: str):
    got = acceptance.check(_part10(tmp_path, dataset, ts))
    assert (got.transfer_syntax, got.part10) == (ts, True)
    assert (got.sop_class_uid, got.sop_instance_uid) == ("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4")


@pytest.mark.parametrize(("name", "dataset", "ts", "reason"), REFUSED, ids=[c[0] for c in REFUSED])
def test_malformed_objects_are_refused_with_the_reason(
    tmp_path: Path, name: str, dataset: bytes, ts: str, reason: str
) -> None:
    with pytest.raises(InvalidDataset) as err:
        acceptance.check(_part10(tmp_path, dataset, ts))
    assert reason in str(err.value)


def test_file_meta_problems_are_refused(tmp_path: Path) -> None:
    preamble = b"\0" * 128 + b"DICM"
    no_ts = preamble + el(0x00020001, b"OB", b"\0\1") + UIDS
    with pytest.raises(InvalidDataset, match="no Transfer Syntax UID"):
        acceptance.check(io.BytesIO(no_ts))
    overrun = preamble + open_el(0x00020001, b"OB", 1000) + b"\0\1"
    with pytest.raises(InvalidDataset, match=r"File Meta element \(0002,0001\)"):
        acceptance.check(io.BytesIO(overrun))
    with pytest.raises(InvalidDataset, match="too short"):
        acceptance.check(io.BytesIO(b"abc"))
    meta_only = part10_with_raw_dataset(tmp_path / "m.dcm", b"")
    with pytest.raises(InvalidDataset, match="no dataset"):
        acceptance.check(meta_only)


def _synthetic(ts: str) -> pydicom.Dataset:
    ds = next(iter_study(StudySpec(instances_per_series=1)))
    if ts == RLELossless:
        ds.compress(RLELossless)
    ds.file_meta.TransferSyntaxUID = ts
    return ds


@pytest.mark.parametrize(
    "ts",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
    ],
)
def test_every_syntax_accepted_whole_and_refused_truncated(tmp_path: Path, ts: str) -> None:
    path = tmp_path / "x.dcm"
    _synthetic(ts).save_as(path, enforce_file_format=True)
    assert acceptance.check(path).transfer_syntax == ts
    data = path.read_bytes()
    for cut in (len(data) - 2, len(data) - 100, len(data) // 2):  # -1 may be a pad byte
        with pytest.raises(InvalidDataset):
            acceptance.check(io.BytesIO(data[:cut]))


def test_deflated_stream_that_is_not_deflate_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    _synthetic(DeflatedExplicitVRLittleEndian).save_as(path, enforce_file_format=True)
    offset = acceptance.check(path).dataset_offset
    data = path.read_bytes()
    with pytest.raises(InvalidDataset, match="deflate"):
        acceptance.check(io.BytesIO(data[:offset] + b"\xff" * 64))


# pydicom 3.0.2's own test files that the rule refuses, and why (each checked by hand).
PYDICOM_REFUSED = {
    "rtplan_truncated.dcm": "BeamSequence",  # cut short
    "MR_truncated.dcm": "PixelData",  # cut short
    "badVR.dcm": "Number of Frames",  # "1A"
    "meta_missing_tsyntax.dcm": "no Transfer Syntax UID",
    "nested_priv_SQ.dcm": "without Rows",  # 2 bytes of Pixel Data, no image attributes
    "MR_small_padded.dcm": "need 8192",  # 128 bytes of excess padding
    "no_meta.dcm": "(0820,0500)",  # a stray byte before the first element
    "SC_rgb_jpeg.dcm": "not in its declared transfer syntax",  # implicit VR under explicit
}


def test_pydicom_test_files() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = [Path(p) for p in get_testdata_files("*") if p.endswith((".dcm", ".DCM"))]
    refused: dict[str, str] = {}
    for f in files:
        try:
            acceptance.check(f)
        except InvalidDataset as exc:
            refused[f.name] = str(exc)
    assert refused.keys() == PYDICOM_REFUSED.keys(), refused
    for name, reason in PYDICOM_REFUSED.items():
        assert reason in refused[name], (name, refused[name])
    assert len(files) - len(refused) > 60


@pytest.mark.parametrize("layout", ["explicit", "implicit", "meta without preamble"])
def test_bare_datasets_are_accepted_and_made_part10(tmp_path: Path, layout: str) -> None:
    ds = next(iter_study(StudySpec(instances_per_series=1)))
    if layout == "meta without preamble":
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds)  # what dicomweb-client sends: File Meta, no preamble
        raw = buf.getvalue()
        dataset = raw[acceptance.check(io.BytesIO(raw)).dataset_offset :]
    else:
        dataset = raw = encoded_dataset(ds, implicit_vr=layout == "implicit")
    path = tmp_path / "bare.dcm"
    path.write_bytes(raw)
    got = acceptance.check(path)
    assert not got.part10 and got.sop_instance_uid == ds.SOPInstanceUID
    again = acceptance.rewrite_as_part10(path, got)
    assert again == acceptance.check(path) and again.part10
    assert path.read_bytes()[again.dataset_offset :] == dataset  # never re-encoded
    assert read_header(path).sop_instance_uid == ds.SOPInstanceUID


def test_file_objects_are_checked_like_paths(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    _synthetic(ExplicitVRLittleEndian).save_as(path, enforce_file_format=True)
    with path.open("rb") as fh:
        assert acceptance.check(fh) == acceptance.check(path)
    assert acceptance.check(io.BytesIO(path.read_bytes())) == acceptance.check(path)


def test_a_1_gib_object_is_scanned_without_reading_it(tmp_path: Path) -> None:
    """Rows 16384 x Columns 32768 x 16 bits: a sparse file, mapped, its headers paged in."""
    ds = encoded_dataset(next(iter_study(StudySpec(instances_per_series=1))))
    head = ds[: ds.index(b"\xe0\x7f\x10\x00")]  # everything before Pixel Data
    head = head.replace(us(0x00280010, 64), us(0x00280010, 16384))
    head = head.replace(us(0x00280011, 64), us(0x00280011, 32768))
    n = 16384 * 32768 * 2
    path = part10_with_raw_dataset(tmp_path / "big.dcm", head + open_el(0x7FE00010, b"OW", n))
    size = path.stat().st_size + n
    with path.open("r+b") as fh:
        fh.truncate(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert acceptance.check(path).size == size
    with path.open("r+b") as fh:
        fh.truncate(size - 1)
    with pytest.raises(InvalidDataset, match="PixelData"):
        acceptance.check(path)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, f"peak RSS grew by {grown_kib} KiB"
