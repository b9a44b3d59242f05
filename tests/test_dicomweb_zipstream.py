"""The streamed ZIP of a retrieve (shared/dicomweb/zipstream.py): what is asked, what comes out,
and that memory stays bounded: no segment grows with the study."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import pytest

from shared.dicomweb import stream, zipstream
from shared.dicomweb.source import InstanceRef
from shared.errors import ChecksumMismatch, NoConversion

EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as p:
        yield p


def refs_for(objects: dict[str, bytes], series: str = "1.2.3.2") -> list[InstanceRef]:
    return [
        InstanceRef("1.2.3.1", series, uid, EXPLICIT, len(b), uid) for uid, b in objects.items()
    ]


class Opener:
    """Opens objects from memory; `lie` bytes short of each, to fake a truncated object."""

    def __init__(self, objects: dict[str, bytes], lie: int = 0) -> None:
        self.objects = objects
        self.lie = lie

    def __call__(self, ref: InstanceRef) -> BinaryIO:
        data = self.objects[ref.locator]
        return io.BytesIO(data[: len(data) - self.lie])


@pytest.mark.parametrize(
    ("accept", "param", "zip_"),
    [
        ("application/zip", None, True),
        (None, "application/zip", True),
        ("multipart/related; type=application/dicom", "application/zip", True),  # param wins
        ("multipart/related; type=application/dicom", None, False),
        (None, None, False),
        ("*/*", None, False),
        ("application/zip;q=0.5, multipart/related;q=0.9", None, False),
        ("multipart/related;q=0.5, application/zip", None, True),
        ("application/zip; transfer-syntax=*", None, True),
        ("application/zip;q=0", None, False),
    ],
)
def test_wants_zip(accept: str | None, param: str | None, zip_: bool) -> None:
    assert zipstream.wants_zip(accept, param) is zip_


def test_a_zip_in_another_transfer_syntax_is_refused() -> None:
    with pytest.raises(NoConversion):
        zipstream.wants_zip('application/zip; transfer-syntax="1.2.840.10008.1.2"')


def test_headers_name_the_file_after_the_study_uid() -> None:
    h = zipstream.headers("1.2.3.4")
    assert h["Content-Type"] == "application/zip"
    assert h["Content-Disposition"] == 'attachment; filename="1.2.3.4.zip"'


def test_members_are_the_objects_unchanged_and_segments_stay_bounded(
    pool: ThreadPoolExecutor,
) -> None:
    big = stream.SMALL_OBJECT + 3 * stream.CHUNK + 17  # streamed chunk by chunk
    objects = {f"1.2.3.3.{i}": bytes([i]) * (1000 * i) for i in range(1, 40)}
    objects |= {"1.2.3.3.100": b"\x01" * big, "1.2.3.3.101": b"\x02" * big}
    refs = refs_for(objects)
    segments = list(zipstream.segments(refs, Opener(objects), pool))
    # a segment is at most one SEGMENT plus what one write added (a chunk or a small object)
    assert max(len(s) for s in segments) <= stream.SEGMENT + stream.CHUNK + 4096
    assert len(segments) > 4  # the 18 MB went out in pieces, not at the end
    with zipfile.ZipFile(io.BytesIO(b"".join(segments))) as zf:
        assert zf.testzip() is None
        names = [i.filename for i in zf.infolist()]
        assert names == [f"1.2.3.1/1.2.3.2/{uid}.dcm" for uid in objects]  # in the given order
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert all(i.flag_bits & 0x08 for i in zf.infolist())  # data descriptors: streamed
        for uid, data in objects.items():
            assert zf.read(f"1.2.3.1/1.2.3.2/{uid}.dcm") == data


@pytest.mark.parametrize("size", [1000, stream.SMALL_OBJECT + 1])
def test_an_object_shorter_than_cataloged_aborts_the_archive(
    pool: ThreadPoolExecutor, size: int
) -> None:
    objects = {"1.2.3.3.1": b"x" * size}
    with pytest.raises(ChecksumMismatch):
        list(zipstream.segments(refs_for(objects), Opener(objects, lie=1), pool))
