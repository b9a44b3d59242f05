"""WADO-RS on the cloud API against compressed objects from real encoders (issue 9 defects).

One server per module over a file:// bucket holding JPEG lossless/extended/baseline objects
made by DCMTK's dcmcjpeg, JPEG-LS by pydicom, a colour JPEG like an ultrasound's, and plain
CT. Requests are made with `requests` (exact Accept headers, as OHIF sends them) and
dicomweb-client.
"""

from __future__ import annotations

import copy
import io
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.encaps import generate_frames

from cloud_api import handlers
from shared.store.base import ObjectStore, open_store
from tests.support.cloud import CloudServer, cloud_config, make_token, running_cloud
from tests.support.dicomweb import (
    colour_jpeg,
    compressed,
    dcmcjpeg,
    eight_bit,
    seed_objects,
    study,
)

ELE = "1.2.840.10008.1.2.1"
JPEG_LOSSLESS = ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57")
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"  # 12-bit DCT: lossy
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JLS = "1.2.840.10008.1.2.4.80"
READERS = ("dicomweb-read", "wado-read")  # the shared pool's threads; the old per-request ones
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@dataclass
class Obj:
    study: str
    series: str
    sop: str
    data: bytes
    original: pydicom.Dataset  # before compression

    @property
    def path(self) -> str:
        return f"/dicomweb/studies/{self.study}/series/{self.series}/instances/{self.sop}"


@dataclass
class World:
    server: CloudServer
    store: ObjectStore
    token: str
    objs: dict[str, Obj] = field(default_factory=dict)  # label -> object
    ct_study: str = ""


def _obj(original: pydicom.Dataset, data: bytes) -> Obj:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return Obj(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, data, original)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, module_catalog_url: str) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("wado")
    cfg = cloud_config(tmp, catalog=module_catalog_url)
    store = open_store(cfg.store_url)
    objs: dict[str, Obj] = {}
    jpeg_study = study(5)
    for ts, ds in zip((*JPEG_LOSSLESS, JPEG_EXTENDED), jpeg_study, strict=False):
        objs[ts] = _obj(ds, dcmcjpeg(ds, ts, tmp / "jpeg"))
    base = eight_bit(jpeg_study[3])
    objs[JPEG_BASELINE] = _obj(base, dcmcjpeg(base, JPEG_BASELINE, tmp / "jpeg"))
    objs[JLS] = _obj(jpeg_study[4], compressed(jpeg_study[4], JLS))
    us = study(1, modality="US")[0]
    objs["colour"] = _obj(us, colour_jpeg(us, (200, 30, 30), (30, 30, 200)))
    multi = study(1)[0]
    frames = [multi.pixel_array + i for i in range(3)]
    multi.NumberOfFrames = 3
    multi.PixelData = np.stack(frames).astype(np.uint16).tobytes()
    objs["multiframe-jls"] = _obj(multi, compressed(multi, JLS))
    ct = study(3, series_count=2)
    seed_objects(store, "a", [o.data for o in objs.values()])
    seed_objects(store, "a", [_bytes(ds) for ds in ct])
    token = make_token(cfg, "root", "admin", [])
    with running_cloud(cfg, store) as server:
        yield World(server, store, token, objs, ct[0].StudyInstanceUID)


def _bytes(ds: pydicom.Dataset) -> bytes:
    from tests.support.cloud import dataset_bytes

    return dataset_bytes(ds)


def get(w: World, path: str, accept: str | None = None, **kw: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {w.token}"}
    if accept is not None:
        headers["Accept"] = accept
    return requests.get(w.server.url + path, headers=headers, timeout=60, **kw)  # type: ignore[arg-type]


def parts(resp: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response."""
    assert resp.status_code == 200, resp.text[:300]
    boundary = re.search(r"boundary=([^;]+)", resp.headers["Content-Type"]).group(1).strip('"')
    out = []
    for raw in resp.content.split(b"--" + boundary.encode())[1:-1]:
        head, body = raw.split(b"\r\n\r\n", 1)
        ctype = re.search(rb"Content-Type: ([^\r\n]+)", head).group(1).decode()
        out.append((ctype, body[:-2] if body.endswith(b"\r\n") else body))
    return out


def stored_frames(data: bytes) -> list[bytes]:
    ds = pydicom.dcmread(io.BytesIO(data))
    n = int(ds.get("NumberOfFrames", 1))
    return list(generate_frames(ds.PixelData, number_of_frames=n))


# ---- frames: labels and transfer syntaxes --------------------------------------------------------


@pytest.mark.parametrize("ts", [*JPEG_LOSSLESS, JPEG_EXTENDED, JPEG_BASELINE])
def test_jpeg_frames_are_labelled_with_their_transfer_syntax(world: World, ts: str) -> None:
    """OHIF reads a bare image/jpeg part as baseline: JPEG lossless frames turned black."""
    o = world.objs[ts]
    got = parts(get(world, o.path + "/frames/1", OHIF_FRAMES))
    assert got == [(f"image/jpeg; transfer-syntax={ts}", stored_frames(o.data)[0])]


@pytest.mark.parametrize("ts", [*JPEG_LOSSLESS, JLS])
def test_frames_decompressed_when_asked_for_explicit_little_endian(world: World, ts: str) -> None:
    o = world.objs[ts]
    accept = f"multipart/related; type=application/octet-stream; transfer-syntax={ELE}"
    [(ctype, frame)] = parts(get(world, o.path + "/frames/1", accept))
    assert ctype == f"application/octet-stream; transfer-syntax={ELE}"
    assert frame == o.original.PixelData  # lossless: the very pixels that were compressed


def test_only_the_requested_frames_of_a_multiframe_object(world: World) -> None:
    o = world.objs["multiframe-jls"]
    size = int(o.original.Rows) * int(o.original.Columns) * 2
    accept = 'multipart/related; type="application/octet-stream"'  # no syntax: Explicit VR LE
    got = parts(get(world, o.path + "/frames/3,1", accept))
    assert [f for _, f in got] == [o.original.PixelData[2 * size :], o.original.PixelData[:size]]
    got = parts(get(world, o.path + "/frames/2", OHIF_FRAMES))
    assert got == [(f"image/jls; transfer-syntax={JLS}", stored_frames(o.data)[1])]


def test_frames_encoded_losslessly_when_asked_for_jpeg_ls(world: World) -> None:
    o = world.objs["1.2.840.10008.1.2.4.70"]
    [(ctype, frame)] = parts(
        get(world, o.path + "/frames/1", 'multipart/related; type="image/jls"')
    )
    assert ctype == f"image/jls; transfer-syntax={JLS}"
    ds = copy.deepcopy(o.original)
    ds.PixelData = pydicom.encaps.encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JLS
    assert np.array_equal(ds.pixel_array, o.original.pixel_array)


@pytest.mark.parametrize(
    "label, accept",
    [
        # lossy targets are never produced from what the archive holds
        (
            JPEG_BASELINE,
            'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.91',
        ),
        (JLS, 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'),
        (JLS, "application/dicom+xml"),
    ],
)
def test_frames_that_cannot_be_produced_are_406(world: World, label: str, accept: str) -> None:
    r = get(world, world.objs[label].path + "/frames/1", accept)
    assert r.status_code == 406, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert r.json()["title"] == "NoConversion"


# ---- instances: transfer syntaxes ----------------------------------------------------------------


def test_instances_converted_to_the_requested_transfer_syntax(world: World) -> None:
    o = world.objs["1.2.840.10008.1.2.4.70"]
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={ELE}'
    got = parts(get(world, f"/dicomweb/studies/{o.study}", accept))
    assert len(got) == 5 and {c for c, _ in got} == {f"application/dicom; transfer-syntax={ELE}"}
    by_uid = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: d for _, d in got}
    for ts in (*JPEG_LOSSLESS, JLS):
        ds = pydicom.dcmread(io.BytesIO(by_uid[world.objs[ts].sop]))
        assert ds.file_meta.TransferSyntaxUID == ELE
        assert ds.PixelData == world.objs[ts].original.PixelData  # lossless round trip
        assert ds.PatientName == world.objs[ts].original.PatientName
    # lossy ones are decompressed (allowed: the client asked for native pixels)
    for ts in (JPEG_EXTENDED, JPEG_BASELINE):
        ds = pydicom.dcmread(io.BytesIO(by_uid[world.objs[ts].sop]))
        assert ds.file_meta.TransferSyntaxUID == ELE
        want = world.objs[ts].original.pixel_array.astype(float).ravel()
        assert np.corrcoef(ds.pixel_array.astype(float).ravel(), want)[0, 1] > 0.95


def test_instances_as_stored_with_transfer_syntax_star(world: World) -> None:
    o = world.objs["1.2.840.10008.1.2.4.70"]
    got = parts(
        get(world, o.path, 'multipart/related; type="application/dicom"; transfer-syntax=*')
    )
    assert got == [("application/dicom; transfer-syntax=1.2.840.10008.1.2.4.70", o.data)]
    # a default dicomweb-client retrieve asks for Explicit VR Little Endian (PS3.18 default)
    c = DICOMwebClient(world.server.dicomweb, headers={"Authorization": f"Bearer {world.token}"})
    ds = c.retrieve_instance(o.study, o.series, o.sop, media_types=(("application/dicom", ELE),))
    assert ds.file_meta.TransferSyntaxUID == ELE and ds.PixelData == o.original.PixelData


def test_instances_accept_q_values_and_several_ranges(world: World) -> None:
    o = world.objs[JLS]
    accept = (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5; q=0.4, '
        f'multipart/related; type="application/dicom"; transfer-syntax={ELE}; q=0.9'
    )
    [(ctype, data)] = parts(get(world, o.path, accept))
    assert ctype == f"application/dicom; transfer-syntax={ELE}"
    assert pydicom.dcmread(io.BytesIO(data)).PixelData == o.original.PixelData


def test_instances_lossy_target_is_406(world: World) -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'
    r = get(world, f"/dicomweb/studies/{world.ct_study}", accept)
    assert r.status_code == 406 and r.json()["title"] == "NoConversion"
    assert JPEG_BASELINE in r.json()["detail"]


# ---- rendered and thumbnail ----------------------------------------------------------------------


@pytest.mark.parametrize("resource", ["/rendered", "/thumbnail", "/frames/1/rendered"])
def test_colour_jpeg_renders_in_its_colours(world: World, resource: str) -> None:
    """pydicom 3 already decodes YBR_FULL_422 JPEG to RGB: converting again made it green."""
    o = world.objs["colour"]
    r = get(world, o.path + resource, "image/png")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
    h, w, _ = img.shape
    left, right = img[h // 2, w // 4], img[h // 2, 3 * w // 4]
    assert np.abs(left - (200, 30, 30)).max() < 12, left
    assert np.abs(right - (30, 30, 200)).max() < 12, right


def test_series_and_study_rendered_are_multipart_of_rendered_instances(world: World) -> None:
    c = DICOMwebClient(world.server.dicomweb, headers={"Authorization": f"Bearer {world.token}"})
    series = c.search_for_series(world.ct_study)
    se = series[0]["0020000E"]["Value"][0]
    got = parts(get(world, f"/dicomweb/studies/{world.ct_study}/series/{se}/rendered"))
    assert [c for c, _ in got] == ["image/jpeg"] * 3
    assert all(Image.open(io.BytesIO(d)).size == (64, 64) for _, d in got)
    got = parts(
        get(
            world,
            f"/dicomweb/studies/{world.ct_study}/rendered",
            'multipart/related; type="image/png"',
        )
    )
    assert len(got) == 6 and all(Image.open(io.BytesIO(d)).format == "PNG" for _, d in got)


# ---- one bounded pool ----------------------------------------------------------------------------


def test_wado_reads_share_one_bounded_pool(world: World) -> None:
    """Each WADO request used to start a pool of 8 threads of its own."""
    seen: set[threading.Thread] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(t for t in threading.enumerate() if t.name.startswith(READERS))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(8) as ex:
            done = list(
                ex.map(lambda _: get(world, f"/dicomweb/studies/{world.ct_study}"), range(24))
            )
    finally:
        stop.set()
        sampler.join()
    assert all(r.status_code == 200 for r in done)
    assert seen and len(seen) <= handlers.READ_THREADS
    assert {t.name.rsplit("_", 1)[0] for t in seen} == {"dicomweb-read"}
