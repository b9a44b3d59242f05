"""shared/integrity.py: a cached file is verified on the one pass that serves it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.checksum import crc32c_bytes
from shared.errors import CorruptInstance, dimse_status, http_status
from shared.integrity import open_verified, read_verified


def _file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "x.dcm"
    p.write_bytes(data)
    return p


def test_read_verified_returns_intact_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000
    p = _file(tmp_path, data)
    assert read_verified(p, crc32c_bytes(data), len(data)) == data


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:1000] + bytes([d[1000] ^ 1]) + d[1001:],  # one flipped bit
        lambda d: d[:-1],  # truncated
        lambda d: d + b"\0",  # grown
    ],
    ids=["flipped", "truncated", "grown"],
)
def test_damaged_file_raises_before_the_last_bytes(tmp_path: Path, damage) -> None:
    data = bytes(range(256)) * 9000
    p = _file(tmp_path, damage(data))
    got = bytearray()
    with (
        open_verified(p, crc32c_bytes(data), len(data), "1.2.3") as r,
        pytest.raises(CorruptInstance, match=r"1\.2\.3"),
    ):
        while chunk := r.read(64 * 1024):
            got += chunk
    assert len(got) < len(data)  # the caller never held the complete damaged file


def test_empty_file_is_checked(tmp_path: Path) -> None:
    p = _file(tmp_path, b"")
    assert read_verified(p, crc32c_bytes(b""), 0) == b""
    with pytest.raises(CorruptInstance):
        read_verified(_file(tmp_path, b"x"), crc32c_bytes(b""), 0)


def test_corrupt_instance_has_statuses() -> None:
    err = CorruptInstance("x")
    assert dimse_status(err) == 0xC001
    assert http_status(err) == 502
