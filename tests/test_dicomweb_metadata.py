"""The fast DICOM JSON encoder says what pydicom's `to_json_dict` says, on pydicom's own files.

Differences by design: bulk data nested in sequences is inline (a `/bulkdata/{tag}` URI can
only name a top-level element), and an element pydicom cannot convert (a malformed DS) loses
its value instead of failing the whole response.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_files

from shared.dicomweb.metadata import (
    BULK_THRESHOLD_BYTES,
    EncodedCache,
    dataset_json,
    encode_instance,
    instance_json,
    with_base,
)
from tests.support.cloud import dataset_bytes
from tests.support.dicomweb import study


def _readable(path: str) -> bool:
    try:
        pydicom.dcmread(path, stop_before_pixels=True, force=True).to_json_dict()
    except Exception:
        return False
    return True


FILES = [f for f in get_testdata_files("*") if f.endswith(".dcm") and _readable(f)]


def _inline_nested(doc: dict[str, Any], top: bool = True) -> dict[str, Any]:
    out = {}
    for tag, elem in doc.items():
        elem = dict(elem)
        if not top and ("BulkDataURI" in elem or "InlineBinary" in elem):
            elem.pop("BulkDataURI", None)
            elem.pop("InlineBinary", None)
            elem["binary"] = True
        if elem.get("vr") == "SQ" and "Value" in elem:
            elem["Value"] = [_inline_nested(item, False) for item in elem["Value"]]
        out[tag] = elem
    return out


@pytest.mark.parametrize("path", FILES, ids=[f.rsplit("/", 1)[-1] for f in FILES])
def test_same_json_as_pydicom(path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ours = dataset_json(pydicom.dcmread(path, stop_before_pixels=True, force=True), _uri)
    theirs = pydicom.dcmread(path, stop_before_pixels=True, force=True).to_json_dict(
        bulk_data_threshold=BULK_THRESHOLD_BYTES, bulk_data_element_handler=lambda e: _uri(e.tag)
    )
    assert json.dumps(_inline_nested(ours), sort_keys=True) == json.dumps(
        _inline_nested(theirs), sort_keys=True
    )


def _uri(tag: int) -> str:
    return f"B/{tag:08X}"


def test_enough_files_were_compared() -> None:
    assert len(FILES) > 50


def test_instance_json_pixel_data_and_transfer_syntax() -> None:
    ds = study(1)[0]
    ds.NumberOfFrames = 1
    header = pydicom.dcmread(io.BytesIO(dataset_bytes(ds)), stop_before_pixels=True)
    doc = instance_json(header, "http://h/dicomweb/studies/1/series/2/instances/3")
    assert doc["7FE00010"] == {
        "vr": "OW",
        "BulkDataURI": "http://h/dicomweb/studies/1/series/2/instances/3/frames/1",
    }
    assert doc["00020010"]["Value"] == ["1.2.840.10008.1.2.1"]
    assert doc["00100010"]["Value"] == [{"Alphabetic": "DOE^JOHN"}]
    assert doc["00280010"] == {"vr": "US", "Value": [64]}


def test_a_malformed_value_loses_its_value_not_the_response() -> None:
    ds = study(1)[0]
    ds.add_new(0x00281050, "DS", "1")
    data = dataset_bytes(ds).replace(b"DS\x02\x001 ", b"DS\x02\x00ab")  # WindowCenter "ab"
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    doc = instance_json(header, "u")
    assert doc["00281050"] == {"vr": "DS"}
    assert doc["00100020"]["Value"] == ["P0001"]


def test_cached_encoding_is_completed_by_each_requests_base() -> None:
    ds = study(1)[0]
    ds.PatientName = 'X"BulkDataURI":"@dicomweb-base@'  # a value cannot forge the key
    header = pydicom.dcmread(io.BytesIO(dataset_bytes(ds)), stop_before_pixels=True)
    encoded = encode_instance(header, "/studies/1/series/2/instances/3")
    for base in ("http://a:1/dicomweb", "https://pacs.example.org/dicomweb"):
        doc = json.loads(with_base(encoded, base))
        assert doc == instance_json(header, base + "/studies/1/series/2/instances/3")
        assert doc["00100010"]["Value"][0]["Alphabetic"] == ds.PatientName


def test_encoded_cache_keeps_within_its_budget() -> None:
    cache = EncodedCache(max_bytes=1600)
    for i in range(20):
        cache.put((f"k{i}", 1), bytes(100))
    assert cache.get(("k0", 1)) is None and cache.get(("k19", 1)) == bytes(100)
    cache.get(("k4", 1))  # recently used: survives the next insertions
    for i in range(20, 24):
        cache.put((f"k{i}", 1), bytes(100))
    assert cache.get(("k4", 1)) == bytes(100) and cache.get(("k5", 1)) is None
    cache.put(("huge", 1), bytes(1000))  # over 1/16 of the budget: not cached
    assert cache.get(("huge", 1)) is None
