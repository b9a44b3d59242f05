"""Association slots shared by every acceptor process: a small file of Linux OFD locks.

Why a file of locks: with `edge.acceptors` > 1 several processes accept on the same port, and
the global and per-node association limits must hold across all of them. Each active
association holds an open-file-description (OFD) write lock on one fixed-size record of
`<data_dir>/associations.slots`, and writes its calling AE title into that record. The kernel
drops the lock when the descriptor is closed or its process dies (kill -9 included), so a dead
acceptor can never leave slots taken, and there is nothing to clean at start. Counting and
taking happen under a second OFD lock (the "mutex" record) plus a thread lock, because OFD
locks taken through one descriptor never conflict with each other.

Cost per association request: one lock test per record (`max_associations` fcntl calls), far
below pynetdicom's own association set-up.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RECORD = 32  # bytes per slot: AE title (16) padded; slot i at offset (i + 1) * RECORD
_AE = 16
# struct flock on Linux (64-bit off_t): l_type, l_whence, l_start, l_len, l_pid (+ padding)
_FLOCK = "hhqqi4x"


def _flock(kind: int, start: int, length: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0)


class Slot:
    """One taken slot; release() (or process death) frees it."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops its OFD lock


class AssocSlots:
    """Counts and takes association slots; safe across threads and processes."""

    def __init__(self, path: str | Path, size: int) -> None:
        self.path = Path(path)
        self.size = size
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < (size + 1) * RECORD:
            os.ftruncate(self._fd, (size + 1) * RECORD)
        self._thread_lock = threading.Lock()

    def close(self) -> None:
        with self._thread_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise count-then-take across threads (thread lock) and processes (OFD lock)."""
        with self._thread_lock:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_WRLCK, 0, RECORD))
            try:
                yield
            finally:
                fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, 0, RECORD))

    def _held(self, i: int) -> bool:
        start = (i + 1) * RECORD
        got = fcntl.fcntl(self._fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, start, RECORD))
        return struct.unpack(_FLOCK, got)[0] != fcntl.F_UNLCK

    def counts(self, calling_ae: str) -> tuple[int, int]:
        """(all active associations, those of calling_ae); call inside locked()."""
        total = mine = 0
        want = calling_ae.strip().encode("ascii", "replace")[:_AE]
        for i in range(self.size):
            if self._held(i):
                total += 1
                if os.pread(self._fd, _AE, (i + 1) * RECORD).rstrip(b"\0 ") == want:
                    mine += 1
        return total, mine

    def active(self) -> int:
        """Associations active in every process (0 once closed: a stopped server has none)."""
        with self._thread_lock:
            if self._fd < 0:
                return 0
            return sum(1 for i in range(self.size) if self._held(i))

    def per_node(self) -> dict[str, int]:
        """Active associations by calling AE title, across every process (the dashboard)."""
        out: dict[str, int] = {}
        with self._thread_lock:
            if self._fd < 0:
                return out
            for i in range(self.size):
                if self._held(i):
                    raw = os.pread(self._fd, _AE, (i + 1) * RECORD).rstrip(b"\0 ")
                    ae = raw.decode("ascii", "replace")
                    out[ae] = out.get(ae, 0) + 1
        return out

    def take(self, calling_ae: str) -> Slot | None:
        """Lock a free slot for calling_ae; None when all are held. Call inside locked()."""
        for i in range(self.size):
            if self._held(i):
                continue
            start = (i + 1) * RECORD
            fd = os.open(self.path, os.O_RDWR)
            try:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, start, RECORD))
            except OSError:
                os.close(fd)
                continue
            ae = calling_ae.strip().encode("ascii", "replace")[:_AE]
            os.pwrite(fd, ae.ljust(_AE, b"\0"), start)
            return Slot(fd)
        return None
