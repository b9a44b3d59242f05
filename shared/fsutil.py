"""Durable file writes: temp file in the same directory, fsync, rename, fsync the directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path, fd: int | None = None) -> None:
    """fsync a file, through `fd` when the caller holds it open (no second open)."""
    if fd is not None:
        os.fsync(fd)
        return
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_rename(src: str | Path, dst: str | Path) -> None:
    """Rename an already fsynced file into place and make the rename itself durable."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    fsync_dir(dst.parent)


def durable_link(src: str | Path, dst: str | Path) -> bool:
    """Hard-link `src` to `dst` only if `dst` does not exist (create-only); True if linked.

    The link is durable on return: `dst`'s directory is fsynced, and so is the parent of
    every directory found missing on the way (created by this call or by a concurrent one: a
    new directory's own entry is only durable once its parent is). The directory usually
    exists: one `link` call, no `mkdir`. See docs/ARCHITECTURE.md, "Ingest (invariant 1)"."""
    dst = os.fspath(dst)
    parent = os.path.dirname(dst)
    try:
        os.link(src, dst)
    except FileExistsError:
        return False
    except FileNotFoundError:
        missing = make_dirs(parent)
        if not missing:
            raise  # the directory was there: `src` is missing
        try:
            os.link(src, dst)
            fsync_dir(parent)
            return True
        except FileExistsError:
            return False
        finally:
            # durable whether or not we won the link; after the leaf's fsync, which on a
            # journaling filesystem (ext4, xfs) already committed these mkdirs, so these
            # fsyncs find nothing left to write and return at once
            for directory in reversed(missing):
                fsync_dir(os.path.dirname(directory))
    fsync_dir(parent)
    return True


def make_dirs(path: str) -> list[str]:
    """`os.makedirs(path, exist_ok=True)` that returns the directories that were missing when
    it looked, shallowest first (whether it or a concurrent caller then made each one)."""
    missing: list[str] = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    missing.reverse()
    for directory in missing:
        try:
            os.mkdir(directory)
        except FileExistsError:
            pass
    return missing


def write_atomic(path: str | Path, data: bytes, tmp_dir: str | Path | None = None) -> None:
    """Write bytes so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(tmp_dir or path.parent), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        durable_rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def free_bytes(path: str | Path) -> int:
    st = os.statvfs(str(path))
    return st.f_bavail * st.f_frsize
