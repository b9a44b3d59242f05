"""Transfer-syntax plans (pure, table-driven) and conversions checked pixel for pixel."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from edge.transcode import Plan, choose, convert
from shared.errors import NoConversion

ELE, ILE = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)

PLANS = [
    # stored, accepted, expected target (None: NoConversion)
    (ELE, [ELE], ELE),
    (ELE, [ILE], ILE),
    (ILE, [ELE, ILE], ILE),
    (str(JPEGBaseline8Bit), [str(JPEGBaseline8Bit), ELE], str(JPEGBaseline8Bit)),
    (str(JPEGBaseline8Bit), [ILE], ILE),
    (str(JPEGBaseline8Bit), [ELE, ILE], ELE),
    (str(JPEG2000), [str(DeflatedExplicitVRLittleEndian)], str(DeflatedExplicitVRLittleEndian)),
    (ELE, [str(RLELossless)], str(RLELossless)),
    (ELE, [str(JPEGLSLossless), str(JPEG2000Lossless)], str(JPEGLSLossless)),
    (str(RLELossless), [str(JPEG2000Lossless)], str(JPEG2000Lossless)),
    # never re-encode lossy, never invent a syntax
    (ELE, [str(JPEGBaseline8Bit)], None),
    (ELE, [str(JPEG2000), str(JPEGLSNearLossless)], None),
    (ELE, [], None),
    ("1.2.3.4.5", [ELE], None),  # unknown stored syntax: nothing can decode it
]


@pytest.mark.parametrize(("stored", "accepted", "target"), PLANS)
def test_choose(stored: str, accepted: list[str], target: str | None) -> None:
    if target is None:
        with pytest.raises(NoConversion):
            choose(stored, accepted)
    else:
        assert choose(stored, accepted) == Plan(stored, target)


def test_no_conversion_message_names_both_sides() -> None:
    with pytest.raises(NoConversion) as err:
        choose(ELE, [str(JPEGBaseline8Bit)])
    assert "Explicit VR Little Endian" in str(err.value)
    assert "JPEG Baseline" in str(err.value)


COMPRESSED_FILES = ["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"]


@pytest.mark.parametrize("name", COMPRESSED_FILES)
def test_decompress_to_explicit_keeps_pixels(name: str) -> None:
    path = get_testdata_file(name)
    expected = pydicom.dcmread(path).pixel_array
    ds = pydicom.dcmread(path)
    out = convert(ds, Plan(str(ds.file_meta.TransferSyntaxUID), ELE))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(out.pixel_array, expected)


@pytest.mark.parametrize("target", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_reencode_lossless_round_trips(target: str) -> None:
    path = get_testdata_file("CT_small.dcm")
    expected = pydicom.dcmread(path).pixel_array
    ds = convert(pydicom.dcmread(path), Plan(ELE, str(target)))
    assert ds.file_meta.TransferSyntaxUID == target
    assert np.array_equal(ds.pixel_array, expected)


def test_as_is_plan_leaves_the_dataset_alone() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert convert(ds, Plan(ELE, ELE)) is ds


def test_conversion_keeps_the_sop_instance_uid() -> None:
    """A lossless change of encoding is the same object (PS3.5 Annex A)."""
    path = get_testdata_file("MR_small_RLE.dcm")
    uid = pydicom.dcmread(path).SOPInstanceUID
    ds = convert(pydicom.dcmread(path), Plan(str(RLELossless), str(JPEG2000Lossless)))
    assert ds.SOPInstanceUID == uid
