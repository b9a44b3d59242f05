"""C-STORE spooling that survives a full disk (pynetdicom adapter).

pynetdicom writes a received dataset to a `NamedTemporaryFile` from its DUL thread
(`STORE_RECV_CHUNKED_DATASET`). When that write fails (ENOSPC, EIO) the exception kills the
DUL thread: the peer never gets a response, waits for its DIMSE timeout, and the association
is never counted out, so a full disk slowly locks every modality out. `SpoolFile` stands in
for the temp file: a failed write is remembered instead of raised, the partial file is
truncated to give the space back, the rest of the dataset is read and dropped, and the C-STORE
handler answers 0xA700 (`error_for`). Everything else pynetdicom does with the file is
unchanged (its name, its close and unlink after the handler).
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

from pynetdicom import dimse_messages

_lock = threading.Lock()
_errors: dict[str, OSError] = {}


class SpoolFile:
    """A NamedTemporaryFile whose write errors are recorded, not raised."""

    def __init__(self, **kwargs: Any) -> None:
        self.error: OSError | None = None
        self._f: Any = None
        try:
            self._f = tempfile.NamedTemporaryFile(**kwargs)  # noqa: SIM115 - closed by pynetdicom
            self.name: str = self._f.name
        except OSError as exc:  # no inode or no directory: nothing was created
            self.name = os.path.join(tempfile.gettempdir(), f"unwritable-{id(self)}.dcm")
            self._fail(exc)

    @property
    def file(self) -> SpoolFile:
        """pynetdicom calls `.file.flush()` after each fragment."""
        return self

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                return int(self._f.write(data))
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._f.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        if self._f is None:
            return
        try:
            self._f.close()
        except OSError:
            pass  # the buffered rest of a failed write: nothing to keep

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        with _lock:
            _errors[self.name] = exc
        if self._f is not None:
            try:
                os.ftruncate(self._f.fileno(), 0)  # give the space back at once
            except OSError:
                pass


def error_for(path: str | os.PathLike[str]) -> OSError | None:
    """The write error of a spooled dataset, if any (forgotten once asked)."""
    with _lock:
        return _errors.pop(os.fspath(path), None)


def install() -> None:
    """Make pynetdicom spool received C-STORE datasets through SpoolFile."""
    dimse_messages.NamedTemporaryFile = SpoolFile  # type: ignore[assignment,misc]
