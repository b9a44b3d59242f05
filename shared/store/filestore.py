"""`file:///dir`: the object store on a local or mounted filesystem (tests, NAS, air-gapped sites).

Objects are files at `<root>/<key>`, written so a reader sees the whole object or none: an
O_TMPFILE file in the object's directory (a named temp file in `<root>/.tmp` where the
filesystem has none), fsync, a create-only link into place, fsync of the directory.
Checksums and metadata travel with the object as the extended attribute `user.hpacs.meta`,
set before the one fsync; where user xattrs are refused they go to a sidecar
`<root>/.meta/<key>.json` written after the data and not fsynced. When both are missing
(a crash, a copied tree) head() recomputes them from the bytes. Keys are validated so
nothing escapes the root: no absolute paths, no `.` or `..` components, no components
starting with a dot (which also keeps keys away from `.tmp` and `.meta`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from shared.checksum import CHUNK, Crc32c
from shared.errors import NotFound, ObjectExists, PermanentStoreError, TransientStoreError
from shared.fsutil import durable_link, durable_rename, fsync_dir
from shared.store.base import ObjectInfo

XATTR = "user.hpacs.meta"  # the object's size, checksums, content type and metadata (JSON)


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
        self.holds = self.root / ".holds"  # legal holds: a marker per held key refuses deletes
        self._tmpfile_ok = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._xattr_ok = hasattr(os, "setxattr")
        # whether sidecars may exist (written here, or left by an older version of this store)
        self.meta_sidecars = any(self.meta.iterdir()) if self.meta.is_dir() else False
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
            info = self._write(key, final, source, content_type, dict(metadata or {}), if_absent)
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
        if not stat.S_ISREG(st.st_mode):
            return None
        d = self._read_meta(key, path)
        try:
            if d is not None and int(d.get("size", -1)) == st.st_size:
                return ObjectInfo(
                    key=key,
                    size=st.st_size,
                    crc32c=str(d["crc32c"]),
                    md5=str(d.get("md5", "")),
                    content_type=str(d.get("content_type", "application/octet-stream")),
                    metadata=dict(d.get("metadata") or {}),
                    updated=st.st_mtime,
                )
        except (KeyError, TypeError, ValueError):
            pass  # damaged metadata: the bytes decide
        crc, md5 = _digests(path)  # metadata lost (a crash, a copy): the bytes are the truth
        return ObjectInfo(key=key, size=st.st_size, crc32c=crc, md5=md5, updated=st.st_mtime)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if (self.holds / key).exists():
            raise PermanentStoreError(f"{key} is under a legal hold: release it first")
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

    def set_hold(self, key: str, held: bool) -> bool:
        """The hold as a marker file `<root>/.holds/<key>` (hidden from listings like `.meta`);
        `delete` refuses a held key, as GCS does. Kept by this store: always True."""
        path, marker = self._path(key), self.holds / check_key(key)
        if not path.is_file():
            raise NotFound(f"no object {key}")
        try:
            if held:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                fsync_dir(marker.parent)
            else:
                marker.unlink(missing_ok=True)
        except OSError as exc:
            raise TransientStoreError(f"cannot set the hold of {key}: {exc}") from exc
        return True

    # ---- internals ------------------------------------------------------------------------
    def _write(
        self,
        key: str,
        final: Path,
        source: Path | bytes,
        content_type: str,
        metadata: dict[str, str],
        if_absent: bool,
    ) -> ObjectInfo:
        """Write the bytes to an unnamed or temp file computing the crc32c from the very
        buffers written, attach the metadata, fsync once, then publish under `final`.

        The crc32c reported is that of the bytes handed to write(2), not a re-read of the
        object: the kernel does not alter written bytes, and re-reading a just-written file
        would come from the page cache anyway (it would not prove what the platter holds), so
        it would cost a second pass over every byte and prove nothing more (invariant 2).
        No md5 (the protocol makes it optional): on a busy 2-core box it cost more CPU than
        the crc32c, which is what every caller verifies.
        """
        fd, tmp_name = self._open_unnamed(final.parent)
        crc = Crc32c()
        size = 0
        try:
            for chunk in _chunks(source):
                crc.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                size += len(chunk)
            info = ObjectInfo(
                key=key,
                size=size,
                crc32c=crc.hexdigest(),
                content_type=content_type,
                metadata=metadata,
                updated=os.fstat(fd).st_mtime,
            )
            in_xattr = self._set_meta_xattr(fd, info)
            os.fsync(fd)  # data and the extended attribute: one inode, one fsync
            if tmp_name is None:
                # O_TMPFILE: linkat through /proc is create-only and atomic by itself
                try:
                    _link_fd(fd, final)
                except FileExistsError:
                    if if_absent:
                        raise ObjectExists(f"{key} exists") from None
                    tmp_name = self._name_unnamed(fd)
                    os.replace(tmp_name, final)
                    tmp_name = None
                fsync_dir(final.parent)
            elif if_absent:
                if not durable_link(tmp_name, final):
                    raise ObjectExists(f"{key} exists")
            else:
                durable_rename(tmp_name, final)
                tmp_name = None
        finally:
            os.close(fd)
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except FileNotFoundError:
                    pass
        if not in_xattr:
            self._write_meta(info)
        elif self.meta_sidecars:
            self._drop_sidecar(key)  # a sidecar from an earlier object under this key
        return info

    def _open_unnamed(self, directory: Path) -> tuple[int, str | None]:
        """An O_TMPFILE file in the object's own directory (no temp name to create, rename
        and unlink: fewer journal updates per put), or a named temp file in `.tmp` where
        the filesystem has no O_TMPFILE."""
        if self._tmpfile_ok:
            for _ in range(2):
                try:
                    return os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644), None
                except FileNotFoundError:
                    directory.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.EISDIR):
                        raise
                    self._tmpfile_ok = False
                    break
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=str(self.tmp), prefix="put-")
        return fd, name

    def _name_unnamed(self, fd: int) -> str:
        """Give an O_TMPFILE file a temp name (the overwrite path needs a rename source)."""
        name = str(self.tmp / f"put-{os.getpid()}-{fd}-{time.monotonic_ns()}")
        _link_fd(fd, name)
        return name

    def _set_meta_xattr(self, fd: int, info: ObjectInfo) -> bool:
        """Metadata as an extended attribute of the object itself: written with the data,
        fsynced with it, published atomically with it, gone with it (no sidecar file to
        create per put). False where the filesystem refuses user xattrs: sidecar then."""
        if not self._xattr_ok:
            return False
        try:
            os.setxattr(fd, XATTR, _meta_doc(info))
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.E2BIG, errno.ENOSPC):
                raise
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                self._xattr_ok = False
            return False
        return True

    def _read_meta(self, key: str, path: Path) -> dict[str, Any] | None:
        try:
            return dict(json.loads(os.getxattr(path, XATTR)))
        except (OSError, ValueError):
            pass
        try:
            return dict(json.loads(self._meta_path(key).read_bytes()))
        except (OSError, ValueError):
            return None

    def _drop_sidecar(self, key: str) -> None:
        try:
            os.unlink(self._meta_path(key))
        except (FileNotFoundError, NotADirectoryError):
            pass

    def _write_meta(self, info: ObjectInfo) -> None:
        # Not fsynced: the sidecar only caches what the bytes say; head() recomputes it when a
        # crash loses it.
        self.meta_sidecars = True
        path = self._meta_path(info.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=str(self.tmp), prefix="meta-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(_meta_doc(info))
        os.replace(name, path)


def _link_fd(fd: int, dst: str | Path) -> None:
    """linkat(2) of an open file through /proc with AT_SYMLINK_FOLLOW: create-only. A
    directory fd as source base makes CPython call linkat (plain link(2) would try to link
    the /proc symlink itself and fail with EXDEV)."""
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(str(fd), dst, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _meta_doc(info: ObjectInfo) -> bytes:
    doc = {
        "size": info.size,
        "crc32c": info.crc32c,
        "md5": info.md5,
        "content_type": info.content_type,
        "metadata": info.metadata,
    }
    return json.dumps(doc).encode()


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
