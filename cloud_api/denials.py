"""Requests refused before a route (no valid token): counted per client address and window, and
rate-limited per address. Pure: the app supplies the clock and writes the records.

Every such request used to be one audit record, so anyone who could reach the port could grow
the log without bound (3,000 requests added 1.6 MB in seconds). Now an address gets one record
per window carrying counts, and a token bucket: past `burst` requests at `rate_per_s` it is
answered 429 with Retry-After, still counted, never recorded one by one. Authentication comes
first and a valid token is never limited, so a legitimate client behind the same address keeps
working during a flood.

Memory is bounded: at most `max_clients` addresses are tracked at once; the others share the
overflow entry `*` (one bucket, one count), so rotating source addresses buys nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

OVERFLOW = "*"
PATHS_KEPT = 3


@dataclass
class Tally:
    """The refused requests of one client address in one window."""

    client: str
    window_start: float  # wall clock, seconds since the epoch
    statuses: Counter[int] = field(default_factory=Counter)
    paths: list[str] = field(default_factory=list)
    other_paths: int = 0  # requests to paths beyond the first PATHS_KEPT (memory stays bounded)

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    @property
    def status(self) -> int:
        """The status most of them got (401 on a tie: the refusal itself)."""
        return max(self.statuses, key=lambda s: (self.statuses[s], s == 401))

    def detail(self, window_s: float) -> str:
        counts = " ".join(f"{s}x{n}" for s, n in sorted(self.statuses.items()))
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.window_start))
        more = f" (+{self.other_paths} to other paths)" if self.other_paths else ""
        return f"{counts} in {window_s:g}s from {start}: {', '.join(self.paths)}{more}"


@dataclass
class _Bucket:
    tokens: float
    at: float


class DenialGate:
    def __init__(
        self,
        *,
        window_s: float,
        rate_per_s: float,
        burst: int,
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.window_s, self.rate, self.burst, self.max_clients = (
            window_s,
            rate_per_s,
            burst,
            max_clients,
        )
        self._clock, self._wall = clock, wall
        self._buckets: dict[str, _Bucket] = {}
        self._tallies: dict[str, Tally] = {}
        self._window_end: float | None = None

    def deny(self, client: str, what: str) -> float:
        """Count one refused request; 0.0: answer 401, otherwise answer 429 and say to retry
        after that many seconds."""
        now = self._clock()
        key = client if client in self._buckets or len(self._buckets) < self.max_clients else None
        key = key or OVERFLOW
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate)
        b.at = now
        wait = 0.0
        if b.tokens >= 1.0:
            b.tokens -= 1.0
        else:
            wait = (1.0 - b.tokens) / self.rate
        self._count(key, 429 if wait else 401, what, now)
        return wait

    def _count(self, key: str, status: int, what: str, now: float) -> None:
        if self._window_end is None:
            self._window_end = now + self.window_s
        t = self._tallies.get(key)
        if t is None:
            t = self._tallies[key] = Tally(key, self._wall())
        t.statuses[status] += 1
        if what in t.paths:
            return
        if len(t.paths) < PATHS_KEPT:
            t.paths.append(what[:60])
        else:
            t.other_paths += 1

    def due(self) -> list[Tally]:
        """The tallies of a window that has ended (the housekeeping tick records them)."""
        if self._window_end is None or self._clock() < self._window_end:
            return []
        return self.drain()

    def drain(self) -> list[Tally]:
        """Every tally now (window end, shutdown, or an admin reading the trail); forgets the
        buckets that have refilled, so idle addresses cost no memory."""
        out = sorted(self._tallies.values(), key=lambda t: t.client)
        self._tallies, self._window_end = {}, None
        now = self._clock()
        self._buckets = {
            k: b
            for k, b in self._buckets.items()
            if b.tokens + (now - b.at) * self.rate < self.burst
        }
        return out
