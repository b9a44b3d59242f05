"""Which studies leave the cache: a pure policy, no I/O (the sync agent's evictor executes it).

Whole studies, least recently accessed first, from above the high watermark down to the low
watermark. Never evicted: pinned studies, studies accessed (or still receiving instances) more
recently than `min_age_s`, and studies with any local instance not `synced` (invariant 2: only a
verified cloud copy lets bytes leave the cache).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|[A-Za-z]*)\s*$")


@dataclass(frozen=True)
class Watermark:
    """A cache usage threshold: absolute bytes of cached instances, or a percent of the disk."""

    value: float
    percent: bool

    def bytes_of(self, disk_total: int) -> int:
        return int(disk_total * self.value / 100) if self.percent else int(self.value)


def parse_watermark(text: str) -> Watermark:
    """`"20GB"`, `"512MiB"`, `"1000000"` (bytes) or `"90%"` (of the cache filesystem)."""
    m = _RE.match(text)
    if not m:
        raise ValueError(f"not a size or percent: {text!r}")
    number, unit = float(m.group(1)), m.group(2).upper()
    if unit == "%":
        if not 0 < number <= 100:
            raise ValueError(f"percent out of range: {text!r}")
        return Watermark(number, True)
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r} in {text!r}")
    return Watermark(number * _UNITS[unit], False)


@dataclass(frozen=True)
class StudyUsage:
    """What the policy needs to know about one study with bytes in the cache."""

    study_id: int
    local_bytes: int  # bytes of its instances that are in the cache now
    last_access: float  # last retrieve (or arrival) of any of its instances
    updated_at: float  # last instance received
    pinned: bool
    unsynced: int  # local instances not in state `synced` (cached, uploading, failed, ...)


@dataclass(frozen=True)
class Plan:
    victims: list[int]  # study ids, in eviction order
    freed_bytes: int
    usage_after: int
    skipped: dict[str, int]  # reason -> number of studies skipped for it


def plan_eviction(
    studies: list[StudyUsage],
    usage: int,
    high: int,
    low: int,
    now: float,
    min_age_s: float,
) -> Plan:
    """Victims to bring `usage` from above `high` to at most `low` (or as close as allowed).

    Nothing happens at or below the high watermark, so the cache does not churn around one
    threshold; once above it, eviction goes all the way down to the low one.
    """
    skipped = {"pinned": 0, "young": 0, "unsynced": 0}
    if usage <= high:
        return Plan([], 0, usage, skipped)
    victims: list[int] = []
    freed = 0
    for s in sorted(studies, key=lambda s: (s.last_access, s.study_id)):
        if usage - freed <= low:
            break
        if s.local_bytes <= 0:
            continue
        if s.pinned:
            skipped["pinned"] += 1
        elif now - max(s.last_access, s.updated_at) < min_age_s:
            skipped["young"] += 1
        elif s.unsynced:
            skipped["unsynced"] += 1
        else:
            victims.append(s.study_id)
            freed += s.local_bytes
    return Plan(victims, freed, usage - freed, skipped)
