"""C-STORE in every accepted transfer syntax and in several character sets.

DCMTK storescu proposes each file's own syntax; the stored object must keep that syntax and
every data element, and the study row must hold the patient name decoded. pynetdicom sends
files unparsed to prove the stored file holds exactly the dataset bytes that were received.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble
from pynetdicom import _config

from edge.server import EdgeServer
from shared.checksum import crc32c_file
from shared.errors import SUCCESS
from shared.synthetic import StudySpec, iter_study, uid
from tests.support.dcmtk import run
from tests.support.edge import association, edge_config, running_edge

# storescu option proposing exactly one transfer syntax
STORESCU_OPTION = {
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
}
# pydicom's bundled test files, one per syntax DCMTK sends unchanged
TEST_FILES = [
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, ISO_IR 192
    "JPGExtended.dcm",  # JPEG extended
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1
    "SC_rgb_jls_lossy_line.dcm",  # JPEG-LS near-lossless
    "JPEG2000.dcm",  # JPEG 2000
    "image_dfl.dcm",  # deflated explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "CT_small.dcm",  # explicit VR little endian, ISO_IR 100
]
# synthetic studies compressed by pydicom's encoders, with non-ASCII names
NAMES = {
    "1.2.840.10008.1.2.4.80": ("ISO 2022 IR 13\\ISO 2022 IR 87", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
    "1.2.840.10008.1.2.4.90": ("ISO_IR 192", "山田^太郎"),
    "1.2.840.10008.1.2.5": ("ISO_IR 100", "MÜLLER^HANS"),
    "1.2.840.10008.1.2.1": ("ISO_IR 100", "GÖRANSSON^ÅSA"),
}
PATIENT_ID = "PID-7731-X"


@dataclass(frozen=True)
class Sample:
    path: Path
    transfer_syntax: str
    sop_instance_uid: str
    patient_name: str


def _fresh(ds: pydicom.Dataset) -> None:
    """New instance (and, where missing, study/series) UIDs: the test files share some."""
    ds.SOPInstanceUID = uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for kw in ("StudyInstanceUID", "SeriesInstanceUID"):
        if kw not in ds:
            setattr(ds, kw, uid())
    if 0xFFFCFFFC in ds:  # storescu drops trailing padding before sending: not our doing
        del ds[0xFFFCFFFC]


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    folder = tmp_path_factory.mktemp("mixed")
    out: list[Sample] = []
    for name in TEST_FILES:
        ds = pydicom.dcmread(get_testdata_file(name))
        _fresh(ds)
        path = folder / name
        ds.save_as(path)
        out.append(
            Sample(
                path,
                str(ds.file_meta.TransferSyntaxUID),
                ds.SOPInstanceUID,
                str(ds.get("PatientName", "")),
            )
        )
    for ts, (charset, name) in NAMES.items():
        spec = StudySpec(
            instances_per_series=1,
            specific_character_set=charset,
            patient_name=name,
            patient_id=PATIENT_ID,
        )
        ds = next(iter_study(spec))
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
        if ts != "1.2.840.10008.1.2.1":
            ds.compress(ts)
        path = folder / f"synthetic-{ts}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(Sample(path, ts, ds.SOPInstanceUID, name))
    return out


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EdgeServer]:
    with running_edge(edge_config(tmp_path)) as srv:
        yield srv


def _dataset_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        read_preamble(fh, False)
        _read_file_meta_info(fh)
        return fh.read()


def _stored(server: EdgeServer) -> dict[str, tuple[Path, str, str]]:
    rows = server.db.reader().execute(
        "SELECT i.sop_instance_uid, i.path, i.transfer_syntax, i.crc32c FROM instances i"
    )
    return {r[0]: (server.cache.path(r[1]), r[2], r[3]) for r in rows}


def test_storescu_stores_every_syntax_and_charset(
    server: EdgeServer, samples: list[Sample], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    by_ts: dict[str, list[Sample]] = {}
    for s in samples:
        by_ts.setdefault(s.transfer_syntax, []).append(s)
    for ts, group in by_ts.items():
        r = run(
            "storescu",
            STORESCU_OPTION[ts],
            "-aet",
            "STORESCU",
            "-aec",
            "HPACS",
            "127.0.0.1",
            server.ports[0],
            *(s.path for s in group),
        )
        assert r.returncode == 0, f"{ts}: {r.stderr}"
    stored = _stored(server)
    assert len(stored) == len(samples)
    for s in samples:
        path, ts, crc = stored[s.sop_instance_uid]
        assert ts == s.transfer_syntax, s.path.name
        assert crc == crc32c_file(path)
        got, sent = pydicom.dcmread(path), pydicom.dcmread(s.path)
        assert got.file_meta.TransferSyntaxUID == s.transfer_syntax
        assert got == sent, f"{s.path.name}: data elements differ"
    names = {
        r[0]
        for r in server.db.reader().execute(
            "SELECT s.patient_name FROM studies s JOIN instances i ON i.study_id = s.id"
        )
    }
    for _, name in NAMES.values():
        assert name in names
    norm = server.db.reader().execute(
        "SELECT patient_name_norm FROM studies WHERE patient_name = ?", ("MÜLLER^HANS",)
    )
    assert norm.fetchone()[0] == "MÜLLER^HANS"
    # one INFO line per association, and no patient data in any log line at INFO or above
    closed = [r.getMessage() for r in caplog.records if "association closed" in r.getMessage()]
    assert len(closed) == len(by_ts)
    assert all(
        "calling_ae=STORESCU" in m and "peer=127.0.0.1" in m and "failed=0" in m for m in closed
    )
    assert {m.split("stored=")[1].split()[0] for m in closed} <= {"1", "2", "3"}
    assert all("contexts=" in m and "duration_s=" in m for m in closed)
    for rec in caplog.records:
        if rec.levelno >= logging.INFO:
            msg = rec.getMessage()
            assert PATIENT_ID not in msg
            assert not any(n.split("^")[0] in msg for _, n in NAMES.values())


def test_stored_file_holds_exactly_the_bytes_received(
    server: EdgeServer, samples: list[Sample]
) -> None:
    """pynetdicom sends each file's dataset bytes unparsed; the cache must hold them as-is."""
    contexts = sorted(
        {(str(pydicom.dcmread(s.path).SOPClassUID), s.transfer_syntax) for s in samples}
    )
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with association(server.ports[0], contexts=[(sop, [ts]) for sop, ts in contexts]) as assoc:
            assert assoc.is_established
            for s in samples:
                assert int(assoc.send_c_store(s.path).Status) == SUCCESS, s.path.name
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    stored = _stored(server)
    for s in samples:
        path, ts, _ = stored[s.sop_instance_uid]
        assert _dataset_bytes(path) == _dataset_bytes(s.path), s.path.name
        assert ts == s.transfer_syntax
