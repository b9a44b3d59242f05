"""The SSD cache: a root with opaque fan-out paths and a temp directory on the same filesystem."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from shared.fsutil import free_bytes
from shared.keys import cache_relpath, is_cache_relpath


class Cache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, relpath: str) -> Path:
        """Absolute path of a cache-relative path; refuses anything outside the root."""
        if is_cache_relpath(relpath):  # the index's own paths: the shape check replaces resolve()
            return self.root / relpath
        p = (self.root / relpath).resolve()
        if self.root not in p.parents:
            raise ValueError(f"path escapes the cache: {relpath!r}")
        return p

    def path_for(self, sop_instance_uid: str) -> tuple[str, Path]:
        rel = cache_relpath(sop_instance_uid)
        return rel, self.root / rel

    def new_temp(self, suffix: str = ".part") -> tuple[BinaryIO, Path]:
        """An open temp file in the cache filesystem, so the final rename is atomic."""
        fd, name = tempfile.mkstemp(dir=str(self.tmp), suffix=suffix)
        return os.fdopen(fd, "wb"), Path(name)

    def copy_to_temp(self, src: str | Path) -> Path:
        fh, tmp = self.new_temp()
        with fh, open(src, "rb") as inp:
            shutil.copyfileobj(inp, fh, 1024 * 1024)
        return tmp

    def free_bytes(self) -> int:
        return free_bytes(self.root)

    def clear_temp(self) -> int:
        """Remove leftovers of interrupted receives; returns how many were removed."""
        n = 0
        for entry in os.scandir(self.tmp):
            if entry.is_file():
                os.unlink(entry.path)
                n += 1
        return n
