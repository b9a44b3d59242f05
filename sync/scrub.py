"""Background scrub: every cached file's crc32c re-verified, continuously, at a bounded rate.

Bit rot does not wait for a retrieve. A thread of the sync agent walks the instances whose file
is in the cache in id order, reads each through the shared verifying reader
(`shared/integrity.py`) at `sync.scrub_bytes_per_s` (0: off), and hands a damaged one to the
one damage policy (`shared/quarantine.py`: quarantined, its verified cloud copy fetched back
through `shared/recall.py`, or marked `lost`). Rows being uploaded (the uploader verifies what
it sends) or evicted are skipped.

Progress lives in the index (`settings` key `scrub.progress`, JSON): the cursor (last id
verified in the current pass), so a restarted agent resumes where it stopped, and the
figures `hpacs-sync status` and the edge's `/metrics` show (bytes and instances verified,
damaged files found, when the last full pass ended). It is written every few seconds, not per
file: a crash re-verifies at most those few seconds' worth. A new pass starts no sooner than
`min_pass_interval_s` after the previous one started, so a small cache is not re-read in a
tight loop.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from shared.errors import CorruptInstance, PacsError
from shared.index import Database
from shared.integrity import open_verified
from shared.lifecycle import LOCAL_STATES, State
from shared.quarantine import Refetcher, handle_damage
from shared.scrubstate import SETTING, load_progress

log = logging.getLogger("hpacs.sync.scrub")

CHUNK = 1024 * 1024
BATCH = 200  # rows fetched per query
SAVE_INTERVAL_S = 5.0
MIN_PASS_INTERVAL_S = 300.0  # the rate bounds the load; this only spares a small cache
# Rows whose file is in the cache and nobody else is reading for a verification of their own.
SCRUBBED_STATES = tuple(sorted(s.value for s in LOCAL_STATES if s is not State.UPLOADING))
_STATES_SQL = ",".join("?" * len(SCRUBBED_STATES))


class Scrubber:
    def __init__(
        self,
        db: Database,
        cache_dir: Path,
        rate_bytes_per_s: int,
        refetch: Refetcher | None,
        *,
        min_pass_interval_s: float = MIN_PASS_INTERVAL_S,
    ) -> None:
        self.db = db
        self.cache_dir = Path(cache_dir)
        self.rate = rate_bytes_per_s
        self.refetch = refetch
        self.min_pass_interval_s = min_pass_interval_s
        self.progress = load_progress(db.reader())
        self._saved_at = time.monotonic()
        self._window_start = time.monotonic()
        self._window_bytes = 0

    # ---- the thread -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Scrub until `stop` is set; the sync agent runs this in its own thread."""
        if self.rate <= 0:
            return
        log.info("scrub started rate_bytes_per_s=%d cursor=%d", self.rate, self.progress.cursor)
        try:
            while not stop.is_set():
                wait = self.pause_before_pass()
                if wait > 0:
                    stop.wait(wait)
                    continue
                self.run_pass(stop)
        finally:
            self.save()

    def pause_before_pass(self, now: float | None = None) -> float:
        """Seconds to wait before the next pass may start (0 mid-pass or when due)."""
        p = self.progress
        if p.cursor or not p.pass_started_at:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, p.pass_started_at + self.min_pass_interval_s - now)

    def run_pass(self, stop: threading.Event | None = None, max_instances: int = 0) -> bool:
        """Verify from the cursor on; True when the pass reached the end of the cache."""
        p = self.progress
        if not p.cursor:
            p.pass_started_at, p.pass_instances = time.time(), 0
        self._window_start, self._window_bytes = time.monotonic(), 0
        done = 0
        while stop is None or not stop.is_set():
            rows = self._next_rows(p.cursor)
            if not rows:
                self._pass_done()
                return True
            for iid, path, size, crc, uid in rows:
                stopped = stop is not None and stop.is_set()
                if stopped or (max_instances and done >= max_instances):
                    self.save()
                    return False
                self._scrub_one(iid, path, size, crc, uid, stop)
                done += 1
                self._maybe_save()
        self.save()
        return False

    # ---- one instance ---------------------------------------------------------------------
    def _next_rows(self, cursor: int) -> list[tuple[int, str, int, str, str]]:
        return [
            (int(r[0]), r[1], int(r[2]), r[3], r[4])
            for r in self.db.reader().execute(
                "SELECT id, path, size, crc32c, sop_instance_uid FROM instances "
                f"WHERE id > ? AND state IN ({_STATES_SQL}) ORDER BY id LIMIT ?",
                (cursor, *SCRUBBED_STATES, BATCH),
            )
        ]

    def _scrub_one(
        self, iid: int, path: str, size: int, crc: str, uid: str, stop: threading.Event | None
    ) -> None:
        p = self.progress
        try:
            with open_verified(self.cache_dir / path, crc, size, uid) as reader:
                while chunk := reader.read(CHUNK):
                    self._throttle(len(chunk), stop)
                reader.read()  # an empty file is checked by its first read
        except FileNotFoundError:
            pass  # evicted or quarantined meanwhile: nothing in the cache to verify
        except CorruptInstance as exc:
            p.damaged += 1
            try:
                handle_damage(
                    self.db, self.cache_dir, iid, (size, crc), str(exc), "scrub", self.refetch
                )
            except PacsError as err:  # lost, or the recall failed: logged where it happened
                log.debug("scrub repair did not complete sop_instance_uid=%s error=%s", uid, err)
        p.cursor = iid
        p.verified_bytes += size
        p.verified_instances += 1
        p.pass_instances += 1

    def _throttle(self, n: int, stop: threading.Event | None) -> None:
        """Keep the average read rate at `rate`, sleeping in slices of at least 20 ms."""
        self._window_bytes += n
        now = time.monotonic()
        ahead = self._window_bytes / self.rate - (now - self._window_start)
        if ahead > 0.02:
            if stop is not None:
                stop.wait(ahead)
            else:
                time.sleep(ahead)
        elif ahead < -1.0:  # idle time is not credit for a burst later
            self._window_start, self._window_bytes = now, 0

    # ---- progress -------------------------------------------------------------------------
    def _pass_done(self) -> None:
        p = self.progress
        p.cursor = 0
        p.passes += 1
        p.last_full_pass_at = time.time()
        log.info(
            "scrub pass done instances=%d damaged_total=%d duration_s=%.0f",
            p.pass_instances,
            p.damaged,
            p.last_full_pass_at - p.pass_started_at,
        )
        self.save()

    def _maybe_save(self) -> None:
        if time.monotonic() - self._saved_at >= SAVE_INTERVAL_S:
            self.save()

    def save(self) -> None:
        with self.db.write() as conn:
            self.db.set_setting(conn, SETTING, self.progress.to_json())
        self._saved_at = time.monotonic()
