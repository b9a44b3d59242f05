"""What an admin asks first: is everything in the cloud, and is the cache healthy.

Lost instances (no intact copy anywhere) are listed by UID, a few of them, with the count; the
background scrub reports how far it got (shared/scrubstate.py, written by sync/scrub.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.index import Database
from shared.lifecycle import State
from shared.quarantine import LOST_ADVICE
from shared.scrubstate import Progress, load_progress
from sync.evictor import Usage

LOST_LISTED = 5  # UIDs of lost instances shown by `hpacs-sync status`


@dataclass(frozen=True)
class Status:
    backlog_count: int
    backlog_bytes: int
    backlog_oldest_age_s: float
    uploading: int
    failed: int
    conflicts: int
    synced: int
    evicted: int
    catalog_pending: int
    last_upload_at: float
    usage: Usage
    lost: int = 0
    lost_uids: list[str] = field(default_factory=list)
    cached_instances: int = 0  # instances whose file is in the cache (what a scrub pass reads)
    scrub: Progress = field(default_factory=Progress)
    scrub_bytes_per_s: int = 0

    def lines(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        u = self.usage
        last = f"{now - self.last_upload_at:.0f}s ago" if self.last_upload_at else "never"
        kind = "disk used" if u.percent else "cache bytes"
        return [
            f"backlog: {self.backlog_count} instances, {_size(self.backlog_bytes)}, "
            f"oldest {self.backlog_oldest_age_s:.0f}s",
            f"uploading: {self.uploading}",
            f"failed: {self.failed}",
            f"conflicts: {self.conflicts}",
            f"synced: {self.synced} (evicted: {self.evicted})",
            f"catalog pending: {self.catalog_pending}",
            f"last successful upload: {last}",
            f"cache: {_size(u.cache_bytes)} in cache; {kind} {_size(u.usage)} "
            f"(high {_size(u.high_bytes)}, low {_size(u.low_bytes)}; disk {_size(u.disk_total)})",
            *self.lost_lines(),
            self.scrub_line(now),
        ]

    def lost_lines(self) -> list[str]:
        if not self.lost:
            return ["lost: 0"]
        more = (
            f" and {self.lost - len(self.lost_uids)} more"
            if self.lost > len(self.lost_uids)
            else ""
        )
        return [
            f"lost: {self.lost} (no intact copy in the cache or the bucket): "
            f"{', '.join(self.lost_uids)}{more}",
            f"  what to do: {LOST_ADVICE}",
        ]

    def scrub_line(self, now: float) -> str:
        p = self.scrub
        if self.scrub_bytes_per_s <= 0 and not p.verified_instances:
            return "scrub: off (sync.scrub_bytes_per_s = 0)"
        last = _ago(now, p.last_full_pass_at) if p.last_full_pass_at else "never"
        rate = f"{_size(self.scrub_bytes_per_s)}/s" if self.scrub_bytes_per_s > 0 else "off"
        return (
            f"scrub: {rate}; this pass {p.pass_instances}/{self.cached_instances} instances; "
            f"last full pass {last}; verified {p.verified_instances} instances "
            f"({_size(p.verified_bytes)}) in all, damaged found {p.damaged}"
        )

    def log_fields(self) -> str:
        u = self.usage
        return (
            f"backlog_count={self.backlog_count} backlog_bytes={self.backlog_bytes} "
            f"backlog_oldest_age_s={self.backlog_oldest_age_s:.0f} failed={self.failed} "
            f"conflicts={self.conflicts} lost={self.lost} catalog_pending={self.catalog_pending} "
            f"usage_bytes={u.usage} high_bytes={u.high_bytes} low_bytes={u.low_bytes} "
            f"last_upload_at={self.last_upload_at:.0f}"
        )


def _ago(now: float, at: float) -> str:
    s = max(0.0, now - at)
    return f"{s:.0f}s ago" if s < 3600 else f"{s / 3600:.1f}h ago"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n}"  # pragma: no cover


def collect(
    db: Database,
    usage: Usage,
    catalog_pending: int,
    now: float | None = None,
    *,
    scrub_bytes_per_s: int = 0,
) -> Status:
    now = time.time() if now is None else now
    conn = db.reader()
    counts = {
        r[0]: r[1] for r in conn.execute("SELECT state, count(*) FROM instances GROUP BY state")
    }
    backlog = conn.execute(
        "SELECT count(*), coalesce(sum(size), 0), min(received_at) FROM instances "
        "WHERE state IN (?, ?)",
        (State.CACHED.value, State.UPLOADING.value),
    ).fetchone()
    last = conn.execute("SELECT coalesce(max(synced_at), 0) FROM instances").fetchone()[0]
    lost_uids = [
        r[0]
        for r in conn.execute(
            "SELECT sop_instance_uid FROM instances WHERE state = ? ORDER BY id LIMIT ?",
            (State.LOST.value, LOST_LISTED),
        )
    ]
    local = (State.CACHED, State.SYNCED, State.FAILED, State.CONFLICT)
    return Status(
        backlog_count=int(backlog[0]),
        backlog_bytes=int(backlog[1]),
        backlog_oldest_age_s=max(0.0, now - backlog[2]) if backlog[2] else 0.0,
        uploading=counts.get(State.UPLOADING.value, 0),
        failed=counts.get(State.FAILED.value, 0),
        conflicts=counts.get(State.CONFLICT.value, 0),
        synced=sum(
            counts.get(s.value, 0)
            for s in (State.SYNCED, State.EVICTING, State.EVICTED, State.RECALLING)
        ),
        evicted=counts.get(State.EVICTED.value, 0),
        catalog_pending=catalog_pending,
        last_upload_at=float(last or 0),
        usage=usage,
        lost=counts.get(State.LOST.value, 0),
        lost_uids=lost_uids,
        cached_instances=sum(counts.get(s.value, 0) for s in local),
        scrub=load_progress(conn),
        scrub_bytes_per_s=scrub_bytes_per_s,
    )
