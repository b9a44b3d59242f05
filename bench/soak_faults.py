"""The soak's faults, at random times drawn from a seeded generator: kill -9 of the edge and of
the sync agent (restarted after a random pause), GCS outages through the proxy, and one byte
flipped in a cache file at rest. Every injected fault is logged with its time."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from soak_site import Service, Site

CLOUD_VERIFIED = {"synced", "evicting", "evicted", "recalling"}  # shared.lifecycle


@dataclass
class FaultOptions:
    edge_kills_per_min: float = 0.2
    sync_kills_per_min: float = 0.2
    corruptions_per_min: float = 2.0
    unsynced_share: float = 0.1  # of corruptions, aimed at files not yet uploaded
    outages: int = 1
    outage_s: float = 120.0
    outage_mode: str = "alternate"  # refuse, hang, or alternate between them
    restart_pause_s: tuple[float, float] = (0.5, 5.0)


@dataclass(frozen=True)
class Corruption:
    at: float  # time.time() of the flip
    sop: str
    study: str
    state: str  # the row's state read just before the flip
    offset: int

    @property
    def before_sync(self) -> bool:
        """The damaged file was then the only verified copy of the instance."""
        return self.state not in CLOUD_VERIFIED


@dataclass
class Window:
    start_s: float
    end_s: float
    mode: str
    active: bool = False
    done: bool = False


@dataclass
class FaultLog:
    counts: Counter[str] = field(default_factory=Counter)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (s, kind, detail)
    corruptions: list[Corruption] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # services that died on their own, ...
    outage_s: float = 0.0


class Faults(threading.Thread):
    def __init__(
        self, site: Site, opts: FaultOptions, seed: int, duration_s: float, stop: threading.Event
    ) -> None:
        super().__init__(name="faults", daemon=True)
        self.site, self.opts, self.duration_s = site, opts, duration_s
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.log = FaultLog()
        self.windows = self._outage_windows()
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._restarts: list[threading.Thread] = []
        self._t0 = time.monotonic()
        self._db: sqlite3.Connection | None = None

    # ---- schedule -------------------------------------------------------------------------
    def _outage_windows(self) -> list[Window]:
        """Outages spread over the middle of the run, each outage_s long (at most the run's
        share of each), jittered."""
        n, d = self.opts.outages, self.duration_s
        length = min(self.opts.outage_s, 0.8 * d / max(n, 1))
        out = []
        for i in range(n):
            centre = d * (0.15 + 0.7 * (i + 0.5) / n) + self.rng.uniform(-0.05, 0.05) * d
            start = min(max(0.05 * d, centre - length / 2), max(0.0, 0.95 * d - length))
            mode = self.opts.outage_mode
            if mode == "alternate":
                mode = ("refuse", "hang")[i % 2]
            out.append(Window(start, start + length, mode))
        return out

    def _next(self, per_min: float) -> float:
        return self.rng.expovariate(per_min / 60.0) if per_min > 0 else float("inf")

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def record(self, kind: str, detail: str = "") -> None:
        with self._lock:
            self.log.counts[kind] += 1
            self.log.events.append((self.elapsed(), kind, detail))
        print(f"  [{self.elapsed():7.1f}s] fault {kind} {detail}", flush=True)

    def run(self) -> None:
        self._t0 = time.monotonic()
        o = self.opts
        due = {
            "kill -9 edge": self._next(o.edge_kills_per_min),
            "kill -9 sync": self._next(o.sync_kills_per_min),
            "corrupt": self._next(o.corruptions_per_min),
        }
        rates = {
            "kill -9 edge": o.edge_kills_per_min,
            "kill -9 sync": o.sync_kills_per_min,
            "corrupt": o.corruptions_per_min,
        }
        while not self.stop_event.wait(0.2) and self.elapsed() < self.duration_s:
            now = self.elapsed()
            self._outages(now)
            self._watch()
            for kind, at in due.items():
                if now < at:
                    continue
                due[kind] = now + self._next(rates[kind])
                if kind == "corrupt":
                    self._corrupt()
                else:
                    self._kill(self.site.edge if kind.endswith("edge") else self.site.sync, kind)
        self.finish()

    def finish(self) -> None:
        """Every outage over, every killed service back (the final check needs them all)."""
        for w in self.windows:
            if w.active:
                self._end_outage(w)
        for t in self._restarts:
            t.join()
        self._watch()
        for t in self._restarts:
            t.join()

    # ---- kill -9 --------------------------------------------------------------------------
    def _kill(self, svc: Service, kind: str) -> None:
        with self._lock:
            if svc.name in self._busy:
                return  # still coming back from the last kill
            self._busy.add(svc.name)
        pid = svc.proc.pid if svc.proc else 0
        pause = self.rng.uniform(*self.opts.restart_pause_s)
        svc.kill9()
        self.record(kind, f"pid {pid}, restart in {pause:.1f}s")
        t = threading.Thread(target=self._restart, args=(svc, pause), daemon=True)
        self._restarts.append(t)
        t.start()

    def _restart(self, svc: Service, pause: float) -> None:
        t0 = time.monotonic()
        time.sleep(pause)  # the service stays down for a while: part of the fault
        svc.start()
        try:
            svc.wait_ready()
            svc.restart_s.append(time.monotonic() - t0)
        except (RuntimeError, TimeoutError) as exc:
            with self._lock:
                self.log.problems.append(f"{svc.name} did not come back after kill -9: {exc}")
        with self._lock:
            self._busy.discard(svc.name)

    def _watch(self) -> None:
        """A service that died without being killed is a finding; it is restarted."""
        for svc in self.site.services:
            with self._lock:
                if svc.name in self._busy or svc.alive():
                    continue
                self._busy.add(svc.name)
                self.log.problems.append(
                    f"{svc.name} exited on its own (status {svc.returncode()}) "
                    f"at {self.elapsed():.1f}s; restarted"
                )
            t = threading.Thread(target=self._restart, args=(svc, 0.0), daemon=True)
            self._restarts.append(t)
            t.start()

    # ---- GCS outage -----------------------------------------------------------------------
    def _outages(self, now: float) -> None:
        for w in self.windows:
            if not w.active and not w.done and now >= w.start_s:
                w.active = True
                self.site.proxy.cut(w.mode)
                self.record(f"gcs outage ({w.mode})", f"for {w.end_s - w.start_s:.0f}s")
            elif w.active and now >= w.end_s:
                self._end_outage(w)

    def _end_outage(self, w: Window) -> None:
        self.site.proxy.restore()
        w.active, w.done = False, True
        self.log.outage_s += self.elapsed() - w.start_s
        print(f"  [{self.elapsed():7.1f}s] gcs outage over", flush=True)

    # ---- corruption -----------------------------------------------------------------------
    def _index(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.site.index_path, timeout=30, isolation_level=None)
        return self._db

    def _corrupt(self) -> None:
        """Flip one byte at a random offset of a recent cache file: a synced one, or with
        probability unsynced_share one not uploaded yet (whose damage destroys the instance)."""
        state = "cached" if self.rng.random() < self.opts.unsynced_share else "synced"
        for _ in range(5):  # the picked file may be evicted under us: pick again
            rows = (
                self._index()
                .execute(
                    "SELECT i.sop_instance_uid, i.path, i.size, s.study_uid FROM instances i "
                    "JOIN studies s ON s.id = i.study_id WHERE i.state = ? "
                    "ORDER BY i.id DESC LIMIT 200",
                    (state,),
                )
                .fetchall()
            )
            if not rows:
                with self._lock:
                    self.log.counts[f"corruption skipped (no {state} file)"] += 1
                return
            sop, rel, size, study = self.rng.choice(rows)
            offset = self.rng.randrange(size)
            if _flip(self.site.cache_dir / rel, offset, self.rng.randint(1, 255)):
                c = Corruption(time.time(), sop, study, state, offset)
                with self._lock:
                    self.log.corruptions.append(c)
                kind = "corrupt cache file (before sync)" if c.before_sync else "corrupt cache file"
                self.record(kind, f"{sop} offset {offset}")
                return

    def recent_corrupted_studies(self, within_s: float = 60.0) -> list[str]:
        now = time.time()
        with self._lock:
            return [c.study for c in self.log.corruptions if now - c.at < within_s]


def _flip(path: Path, offset: int, mask: int) -> bool:
    """XOR one byte of a file in place (damage at rest); False when the file is gone."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        b = os.pread(fd, 1, offset)
        if len(b) != 1:
            return False
        os.pwrite(fd, bytes([b[0] ^ mask]), offset)
        return True
    finally:
        os.close(fd)
