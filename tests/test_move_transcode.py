"""C-MOVE of compressed objects: converted for peers that accept only uncompressed syntaxes,
byte for byte for peers that accept the stored syntax (DCMTK movescu -> DCMTK storescp)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from edge.server import EdgeServer
from tests.support.dcmtk import movescu
from tests.support.retrieve import dataset_bytes, dcmtk_destination, load

FILES = ["SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"]


def _move_all(edge: EdgeServer, out: Path, *storescp_options: str) -> dict[str, Path]:
    paths = [Path(get_testdata_file(n)) for n in FILES]
    load(edge, paths)
    uids = "\\".join(str(pydicom.dcmread(p).SOPInstanceUID) for p in paths)
    with dcmtk_destination(edge, out, "STORESCP", *storescp_options):
        r = movescu(edge.ports[0], "QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={uids}")
    assert r.returncode == 0, r.stderr
    return {str(pydicom.dcmread(p).SOPInstanceUID): p for p in out.iterdir()}


@pytest.mark.parametrize(
    ("options", "expected_ts"),
    [((), ExplicitVRLittleEndian), (("+xi",), ImplicitVRLittleEndian)],
    ids=["explicit", "implicit-only"],
)
def test_compressed_converted_for_uncompressed_peer(
    edge: EdgeServer, tmp_path: Path, options: tuple[str, ...], expected_ts: str
) -> None:
    received = _move_all(edge, tmp_path / "out", *options)
    assert len(received) == len(FILES)
    for name in FILES:
        original = pydicom.dcmread(get_testdata_file(name))
        got = pydicom.dcmread(received[str(original.SOPInstanceUID)])
        assert got.file_meta.TransferSyntaxUID == expected_ts
        assert np.array_equal(got.pixel_array, original.pixel_array), name


def test_compressed_sent_as_stored_when_accepted(edge: EdgeServer, tmp_path: Path) -> None:
    received = _move_all(edge, tmp_path / "out", "+xa")
    for name in FILES:
        path = Path(get_testdata_file(name))
        uid = str(pydicom.dcmread(path).SOPInstanceUID)
        assert dataset_bytes(received[uid]) == dataset_bytes(path), name
