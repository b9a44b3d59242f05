"""One acceptance rule at every door: C-STORE, STOW (edge ingest stream and cloud), hot folder,
import. Each door refuses the same malformed objects in its own way (0xC000, a FailedSOPSequence
entry and 409, failed/ + .reason, a rejected line) and accepts the same bare datasets.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pynetdicom import _config

from edge.importer import run_import
from shared.errors import CANNOT_UNDERSTAND, InvalidDataset
from shared.rows import Origin
from shared.store.base import open_store
from shared.synthetic import StudySpec, iter_study, write_study
from tests.support.cloud import cloud_config, make_token, running_cloud
from tests.support.edge import (
    association,
    edge_config,
    encoded_dataset,
    part10_with_raw_dataset,
    running_edge,
)
from tests.support.net import wait_for
from tests.support.routing import EdgeParts, edge_parts, routing_config

pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")


def _dataset() -> pydicom.Dataset:
    return next(iter_study(StudySpec(instances_per_series=1)))


def _huge_text_value(ds: pydicom.Dataset) -> bytes:
    """The attack test's object: a (0040,A160) UT declaring 0xFFFFFFF0 bytes, 3 present."""
    return encoded_dataset(ds) + b"\x40\x00\x60\xa1UT\x00\x00\xf0\xff\xff\xff" + b"abc"


def _truncated_part10(tmp_path: Path, name: str) -> Path:
    """A complete Part-10 file cut inside its Pixel Data (header intact: pydicom reads it)."""
    src = write_study(StudySpec(instances_per_series=1), tmp_path / "src")[0]
    data = src.read_bytes()
    out = tmp_path / name
    out.write_bytes(data[: len(data) - 1000])
    pydicom.dcmread(out, stop_before_pixels=True)  # the old header-only parse accepts it
    return out


# ---- C-STORE ------------------------------------------------------------------------------


_SQ_OPEN = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
_SQ_CLOSE = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("case", "tail", "reason"),
    [
        ("huge UT", b"\x40\x00\x60\xa1UT\x00\x00\xf0\xff\xff\xff" + b"abc",
         "(0040,A160) TextValue at offset"),
        ("unclosed sequence", _SQ_OPEN, "item not closed"),
        ("1,000-deep sequences", _SQ_OPEN * 1000 + _SQ_CLOSE * 1000, "nested deeper than 64"),
    ],
)  # fmt: skip
def test_cstore_of_a_malformed_dataset_is_0xc000_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, tail: bytes, reason: str
) -> None:
    caplog.set_level(logging.WARNING)
    ds = _dataset()
    del ds.PixelData  # the malformed element ends the dataset
    path = part10_with_raw_dataset(
        tmp_path / "in" / "bad.dcm",
        encoded_dataset(ds) + tail,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
    )
    with running_edge(edge_config(tmp_path)) as server, association(server.ports[0]) as assoc:
        _config.STORE_SEND_CHUNKED_DATASET = True  # the bytes after the meta go out unparsed
        try:
            status = int(assoc.send_c_store(path).Status)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        assert status == CANNOT_UNDERSTAND, hex(status)
        assert server.db.reader().execute("SELECT count(*) FROM instances").fetchone()[0] == 0
    line = next(r.getMessage() for r in caplog.records if "store failed" in r.getMessage())
    assert reason in line
    assert "DOE" not in line  # the reason names tags and offsets, never values


# ---- the edge's stream door (its STOW-RS) and the cloud's STOW-RS: same decisions ----------


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[EdgeParts]:
    with edge_parts(routing_config(tmp_path, [], [])) as p:
        yield p


def test_edge_stream_door_accepts_a_bare_dataset_as_part10(parts: EdgeParts) -> None:
    ds = _dataset()
    bare = encoded_dataset(ds)  # no preamble, no File Meta (dicomweb-client may send this)
    result = parts.ingestor.ingest_stream(io.BytesIO(bare), Origin("stow"))
    assert result.outcome.value == "stored"
    stored = parts.cache.path(result.relpath).read_bytes()
    assert stored[128:132] == b"DICM" and stored.endswith(bare)
    assert pydicom.dcmread(io.BytesIO(stored)).SOPInstanceUID == ds.SOPInstanceUID


def test_edge_stream_door_refuses_the_malformed_object(parts: EdgeParts) -> None:
    with pytest.raises(InvalidDataset, match="declares 4294967280 bytes"):
        parts.ingestor.ingest_stream(io.BytesIO(_huge_text_value(_dataset())), Origin("stow"))
    assert parts.db.reader().execute("SELECT count(*) FROM instances").fetchone()[0] == 0


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    b = "doorboundary"
    body = b"".join(
        f"--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts
    )
    return (
        body + f"--{b}--\r\n".encode(),
        f'multipart/related; type="application/dicom"; boundary={b}',
    )


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[Any, str, Any]]:
    cfg = cloud_config(tmp_path)
    store = open_store(cfg.store_url)
    token = make_token(cfg, "uploader", "agent", ["cloud"])
    with running_cloud(cfg, store) as server:
        yield server, token, store


def _stow(server: Any, token: str, parts: list[bytes]) -> requests.Response:
    body, ctype = _multipart(parts)
    return requests.post(
        server.dicomweb + "/studies",
        data=body,
        timeout=30,
        headers={"Content-Type": ctype, "Authorization": f"Bearer {token}"},
    )


def test_cloud_stow_refuses_the_malformed_object_and_accepts_a_bare_dataset(
    cloud: tuple[Any, str, Any], tmp_path: Path
) -> None:
    server, token, store = cloud
    bad = _huge_text_value(_dataset())
    truncated = _truncated_part10(tmp_path, "cut.dcm").read_bytes()
    r = _stow(server, token, [bad, truncated])
    assert r.status_code == 409, r.text
    failed = r.json()["00081198"]["Value"]
    assert [f["00081197"]["Value"][0] for f in failed] == [CANNOT_UNDERSTAND] * 2
    assert not list(store.list("instances/"))
    ds = _dataset()
    bare = encoded_dataset(ds)
    r = _stow(server, token, [bare])
    assert r.status_code == 200, r.text
    (info,) = list(store.list("instances/"))
    with store.open(info.key) as fh:
        stored = fh.read()
    assert stored[128:132] == b"DICM" and stored.endswith(bare)


# ---- hot folder and import ------------------------------------------------------------------


def test_hot_folder_fails_a_truncated_file_with_the_reason(
    tmp_path: Path, parts: EdgeParts
) -> None:
    from edge.hotfolder import HotFolder

    root = tmp_path / "import"
    root.mkdir()
    _truncated_part10(tmp_path, "cut.dcm").rename(root / "cut.dcm")
    (root / "bare.dcm").write_bytes(encoded_dataset(_dataset()))
    hf = HotFolder(root, parts.ingestor, settle_s=0.1)
    hf.start()
    try:
        wait_for(lambda: (root / "failed" / "cut.dcm.reason").exists(), 15, "cut.dcm failed")
        wait_for(lambda: (root / "done" / "bare.dcm").exists(), 15, "bare.dcm done")
    finally:
        hf.stop()
    reason = (root / "failed" / "cut.dcm.reason").read_text()
    assert reason.startswith("InvalidDataset: element (7FE0,0010) PixelData")
    assert "declares" in reason
    assert hf.counts == {"stored": 1, "duplicate": 0, "failed": 1}


def test_import_rejects_a_truncated_file_with_the_reason(tmp_path: Path, parts: EdgeParts) -> None:
    media = tmp_path / "media"
    media.mkdir()
    _truncated_part10(tmp_path, "cut.dcm").rename(media / "cut.dcm")
    (media / "bare.dcm").write_bytes(encoded_dataset(_dataset()))
    for dry_run in (True, False):
        summary = run_import([media], parts.ingestor, dry_run=dry_run, progress=io.StringIO())
        assert summary.stored == 1
        ((path, reason),) = summary.rejected
        assert path.name == "cut.dcm"
        assert reason.startswith("InvalidDataset: element (7FE0,0010) PixelData")
