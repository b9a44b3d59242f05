"""A cheap probe of the cache disk for the dashboard's "slow retrieval" figures.

Every `edge.disk_probe_interval_s` the HTTP side writes 256 KiB into `<cache>/tmp/`, fsyncs
it and deletes it, timing the write and the fsync. Ingest's own fsyncs would be the truest
figure, but they happen in the DIMSE layer, which another piece of work owns; a probe costs
one small file per interval (leftovers are removed with the other temp files at start-up)
and measures the same disk whether or not anything arrives. The last 30 samples are kept
(15 min at the default interval): the latest, median and worst fsync latency and the write
throughput (bytes over write + fsync time).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROBE_BYTES = 256 * 1024
SAMPLES = 30


@dataclass(frozen=True)
class Sample:
    at: float
    fsync_ms: float
    mb_per_s: float


class DiskProbe:
    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir) / "tmp"
        self._samples: deque[Sample] = deque(maxlen=SAMPLES)
        self._lock = threading.Lock()
        self._last = 0.0
        self._error = ""

    def due(self, interval_s: float) -> bool:
        return time.monotonic() - self._last >= interval_s

    def run(self) -> Sample | None:
        """One probe; None (and the error kept for the dashboard) when the disk refused it."""
        self._last = time.monotonic()
        path = self.dir / f".probe-{os.getpid()}-{threading.get_ident()}"
        data = os.urandom(PROBE_BYTES)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                t0 = time.perf_counter()
                os.write(fd, data)
                t1 = time.perf_counter()
                os.fsync(fd)
                t2 = time.perf_counter()
            finally:
                os.close(fd)
                path.unlink(missing_ok=True)
        except OSError as exc:
            with self._lock:
                self._error = f"{type(exc).__name__}: {exc.strerror or exc}"
            return None
        sample = Sample(time.time(), (t2 - t1) * 1000, PROBE_BYTES / max(t2 - t0, 1e-9) / 1e6)
        with self._lock:
            self._samples.append(sample)
            self._error = ""
        return sample

    def summary(self) -> dict[str, Any]:
        with self._lock:
            samples, error = list(self._samples), self._error
        if not samples:
            return {"samples": 0, "error": error}
        fsyncs = [s.fsync_ms for s in samples]
        return {
            "samples": len(samples),
            "since": samples[0].at,
            "fsync_ms_last": round(fsyncs[-1], 2),
            "fsync_ms_median": round(statistics.median(fsyncs), 2),
            "fsync_ms_max": round(max(fsyncs), 2),
            "write_mb_per_s_median": round(statistics.median(s.mb_per_s for s in samples), 1),
            "error": error,
        }
