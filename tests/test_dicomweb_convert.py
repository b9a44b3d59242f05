"""Whole-instance conversion for WADO-RS (`shared.transcode.encode`, `stream.convert_instance`):
uncompressed syntaxes re-encoded byte-for-byte faithfully, objects without pixel data relabelled."""

from __future__ import annotations

import io

import pydicom
import pytest

from shared.dicomweb.stream import convert_instance
from shared.errors import NoConversion
from tests.support.cloud import dataset_bytes
from tests.support.dicomweb import study

ELE, ILE, DEFLATED = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"


@pytest.mark.parametrize("target", [ILE, DEFLATED, "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"])
def test_round_trip_through_another_syntax_gives_the_same_object(target: str) -> None:
    original = dataset_bytes(study(1)[0])
    there = convert_instance(original, target)
    ds = pydicom.dcmread(io.BytesIO(there))
    assert ds.file_meta.TransferSyntaxUID == target
    assert convert_instance(there, ELE) == original  # every element, every pixel, same bytes


def test_an_object_without_pixel_data_takes_any_label() -> None:
    ds = study(1)[0]
    del ds.PixelData
    out = convert_instance(dataset_bytes(ds), "1.2.840.10008.1.2.4.80")
    back = pydicom.dcmread(io.BytesIO(out))
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert back.PatientID == ds.PatientID and "PixelData" not in back


def test_a_lossy_target_is_refused() -> None:
    with pytest.raises(NoConversion):
        convert_instance(dataset_bytes(study(1)[0]), "1.2.840.10008.1.2.4.50")
