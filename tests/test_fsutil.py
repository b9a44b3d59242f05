"""shared.fsutil: the create-only durable link makes the directories it needs, and reports
every directory that was missing (so their parents get fsynced), its own or a racer's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.fsutil import durable_link, make_dirs


def test_make_dirs_returns_the_missing_directories_shallowest_first(tmp_path: Path) -> None:
    target = tmp_path / "ab" / "cd"
    assert make_dirs(str(target)) == [str(tmp_path / "ab"), str(target)]
    assert target.is_dir()
    assert make_dirs(str(target)) == []


def test_durable_link_creates_the_fan_out_directories_and_is_create_only(tmp_path: Path) -> None:
    src = tmp_path / "tmp-1"
    src.write_bytes(b"one")
    dst = tmp_path / "cache" / "ab" / "cd" / "x.dcm"
    assert durable_link(src, dst) is True
    assert dst.read_bytes() == b"one"
    other = tmp_path / "tmp-2"
    other.write_bytes(b"two")
    assert durable_link(other, dst) is False
    assert dst.read_bytes() == b"one"
    assert os.stat(dst).st_ino == os.stat(src).st_ino


def test_durable_link_of_a_missing_source_raises(tmp_path: Path) -> None:
    (tmp_path / "ab").mkdir()
    with pytest.raises(FileNotFoundError):
        durable_link(tmp_path / "gone", tmp_path / "ab" / "x.dcm")
    with pytest.raises(FileNotFoundError):
        durable_link(tmp_path / "gone", tmp_path / "new" / "x.dcm")
