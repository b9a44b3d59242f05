"""`file:///dir`: the object store on a local or mounted filesystem (tests, NAS, air-gapped sites).

Objects are files at `<root>/<key>`, written like cache files (temp file in `<root>/.tmp`,
fsync, create-only hard link or rename, fsync the directory), so a reader sees the whole object
or none. Checksums and metadata live in a sidecar `<root>/.meta/<key>.json` written after the
data and not fsynced; when it is missing (a crash) they are recomputed from the bytes. Keys are
validated so nothing escapes the root: no absolute paths, no `.` or `..` components, no
components starting with a dot (which also keeps keys away from `.tmp` and `.meta`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shared.checksum import CHUNK, Crc32c
from shared.errors import NotFound, ObjectExists, PermanentStoreError, TransientStoreError
from shared.fsutil import durable_link, durable_rename
from shared.store.base import ObjectInfo


def check_key(key: str) -> str:
    """A key safe to join to the root; PermanentStoreError otherwise (a bug, not an outage)."""
    parts = key.split("/")
    if (
        not key
        or "\\" in key
        or "\x00" in key
        or any(not p or p.startswith(".") for p in parts)
        or len(key) > 1024
    ):
        raise PermanentStoreError(f"bad object key {key[:120]!r}")
    return key


class FileStore:
    def __init__(self, url: str) -> None:
        if not url.startswith("file://"):
            raise ValueError(f"not a file:// URL: {url!r}")
        self.url = url
        self.root = Path(url[len("file://") :]).resolve()
        self.tmp = self.root / ".tmp"
        self.meta = self.root / ".meta"
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            self.meta.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create the store directory {self.root}: {exc}"
            raise PermanentStoreError(msg) from exc

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _meta_path(self, key: str) -> Path:
        return self.meta / (check_key(key) + ".json")

    # ---- the ObjectStore protocol ---------------------------------------------------------
    def put(
        self,
        key: str,
        source: Path | bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        if_absent: bool = True,
    ) -> ObjectInfo:
        final = self._path(key)
        try:
            tmp, size, crc, md5 = self._spool(source)
            try:
                if if_absent:
                    if not durable_link(tmp, final):
                        raise ObjectExists(f"{key} exists")
                else:
                    durable_rename(tmp, final)
            finally:
                if tmp.exists():
                    os.unlink(tmp)
            info = ObjectInfo(
                key=key,
                size=size,
                crc32c=crc,
                md5=md5,
                content_type=content_type,
                metadata=dict(metadata or {}),
                updated=final.stat().st_mtime,
            )
            self._write_meta(info)
        except (ObjectExists, PermanentStoreError):
            raise
        except NotADirectoryError as exc:
            raise PermanentStoreError(f"key {key!r} collides with an object: {exc}") from exc
        except OSError as exc:
            raise TransientStoreError(f"cannot write {key}: {exc}") from exc
        return info

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(f"no object {key}") from exc
        except OSError as exc:
            raise TransientStoreError(f"cannot read {key}: {exc}") from exc
        if end is None:
            fh.seek(start)
            return fh
        with fh:
            fh.seek(start)
            return io.BytesIO(fh.read(max(0, end - start)))

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise TransientStoreError(f"cannot stat {key}: {exc}") from exc
        if not path.is_file():
            return None
        try:
            d = json.loads(self._meta_path(key).read_bytes())
            if int(d["size"]) == st.st_size:
                return ObjectInfo(
                    key=key,
                    size=st.st_size,
                    crc32c=str(d["crc32c"]),
                    md5=str(d.get("md5", "")),
                    content_type=str(d.get("content_type", "application/octet-stream")),
                    metadata=dict(d.get("metadata") or {}),
                    updated=st.st_mtime,
                )
        except (OSError, ValueError, KeyError):
            pass
        crc, md5 = _digests(path)  # sidecar lost in a crash: the bytes are the truth
        return ObjectInfo(key=key, size=st.st_size, crc32c=crc, md5=md5, updated=st.st_mtime)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(f"no object {key}") from exc
        except OSError as exc:
            raise TransientStoreError(f"cannot delete {key}: {exc}") from exc
        try:
            os.unlink(self._meta_path(key))
        except FileNotFoundError:
            pass

    def list(self, prefix: str, start_offset: str = "") -> Iterator[ObjectInfo]:
        """Walks only the directory the prefix names, then filters; keys in byte order."""
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / directory if directory else self.root
        if directory:
            check_key(directory)
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                key = rel_dir + name
                if name.startswith(".") or not key.startswith(prefix):
                    continue
                if start_offset and key < start_offset:
                    continue
                keys.append(key)
        for key in sorted(keys):
            info = self.head(key)
            if info is not None:
                yield info

    # ---- internals ------------------------------------------------------------------------
    def _spool(self, source: Path | bytes) -> tuple[Path, int, str, str]:
        """Copy the bytes into a fsynced temp file, computing the checksums on the way."""
        # No md5 here (the protocol makes it optional): on a busy 2-core box it cost more CPU
        # than the crc32c, which is what every caller verifies.
        crc = Crc32c()
        fd, name = tempfile.mkstemp(dir=str(self.tmp), prefix="put-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in _chunks(source):
                    crc.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            os.unlink(name)
            raise
        return Path(name), size, crc.hexdigest(), ""

    def _write_meta(self, info: ObjectInfo) -> None:
        doc = {
            "size": info.size,
            "crc32c": info.crc32c,
            "md5": info.md5,
            "content_type": info.content_type,
            "metadata": info.metadata,
        }
        # Not fsynced: the sidecar only caches what the bytes say; head() recomputes it when a
        # crash loses it. Half the fsyncs of a put, which is what bounds a backlog drain.
        path = self._meta_path(info.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=str(self.tmp), prefix="meta-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps(doc).encode())
        os.replace(name, path)


def _chunks(source: Path | bytes) -> Iterator[bytes]:
    if isinstance(source, bytes):
        yield source
        return
    with open(source, "rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def _digests(path: Path) -> tuple[str, str]:
    crc, md5 = Crc32c(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            crc.update(chunk)
            md5.update(chunk)
    return crc.hexdigest(), md5.hexdigest()
