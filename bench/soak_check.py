"""The soak's final check of every acknowledged instance, with the services up and no fault
active: the sync agent has drained, then each instance is looked up in the edge index, its
bytes compared at rest (cache file and bucket object), found by C-FIND and by QIDO-RS, and
retrieved by C-MOVE (recalling what was evicted) bit-identical to what was acknowledged.

Instances whose cache file was damaged by the soak *before* they had a verified cloud copy,
and that ended `lost`, were destroyed by the injected fault (the damage hit the only copy):
they are reported apart and not counted as lost."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soak_faults import CLOUD_VERIFIED, Corruption
from soak_load import Acked, dataset_sha256
from soak_qr import QR, Destination, compare, qido_sops

from shared.errors import NotFound
from shared.keys import instance_key
from shared.store import ObjectStore

SETTLED_BAD = {"failed", "conflict", "lost"}  # states the agent will not move on its own


@dataclass
class CheckReport:
    checked: int = 0
    destroyed: list[str] = field(default_factory=list)  # corrupted before sync, ended lost
    states_before: Counter[str] = field(default_factory=Counter)  # acked rows, before the moves
    states_after: Counter[str] = field(default_factory=Counter)
    at_rest: Counter[str] = field(default_factory=Counter)
    problems: dict[str, list[str]] = field(default_factory=dict)  # kind -> SOP UIDs
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    moves: Counter[str] = field(default_factory=Counter)

    def problem(self, kind: str, sop: str) -> None:
        self.problems.setdefault(kind, []).append(sop)

    def lost(self) -> set[str]:
        """Acknowledged instances with no intact, retrievable copy."""
        kinds = (
            "not in the index",
            "state lost",
            "no intact copy at rest",
            "C-MOVE missing",
            "C-MOVE bytes differ",
        )
        return {s for k in kinds for s in self.problems.get(k, [])}


def index_rows(index: Path) -> dict[str, sqlite3.Row]:
    conn = sqlite3.connect(index, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        return {
            r["sop_instance_uid"]: r
            for r in conn.execute(
                "SELECT sop_instance_uid, state, path, catalog_seq FROM instances"
            )
        }
    finally:
        conn.close()


def settled(row: sqlite3.Row | None) -> bool:
    if row is None:
        return False
    return row["state"] in SETTLED_BAD or (row["state"] in CLOUD_VERIFIED and row["catalog_seq"])


def wait_drained(index: Path, acked: dict[str, Acked], timeout_s: float) -> dict[str, int]:
    """Poll until every acknowledged row is uploaded and journalled (or settled badly); the
    count of rows still pending when the deadline passed, by state."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = index_rows(index)
        pending = Counter(
            (rows[s]["state"] if s in rows else "missing")
            for s in acked
            if not settled(rows.get(s))
        )
        if not pending or time.monotonic() > deadline:
            return dict(pending)
        time.sleep(2.0)  # the agent's pace; polled with a deadline


class FinalCheck:
    def __init__(
        self,
        index: Path,
        cache_dir: Path,
        bucket: ObjectStore,
        qr: QR,
        dest: Destination,
        qido: tuple[str, str],  # cloud API base URL, admin token
        acked: dict[str, Acked],
        studies: dict[str, list[str]],
        corruptions: list[Corruption],
    ) -> None:
        self.index, self.cache_dir, self.bucket = index, cache_dir, bucket
        self.qr, self.dest, self.qido = qr, dest, qido
        self.acked, self.studies, self.corruptions = acked, studies, corruptions
        self.report = CheckReport()

    def run(self, qido_timeout_s: float) -> CheckReport:
        r = self.report
        rows = index_rows(self.index)
        self._exclude_destroyed(rows)
        r.checked = len(self.acked)
        self._timed("at rest (cache and bucket)", lambda: self._at_rest(rows))
        self._timed("C-FIND per study", self._cfind)
        self._timed("QIDO-RS per study", lambda: self._qido(qido_timeout_s))
        self._timed("C-MOVE per study", self._cmove)
        self._after_moves()
        return r

    def _timed(self, what: str, fn: Any) -> None:
        t0 = time.monotonic()
        print(f"  checking {what} ...", flush=True)
        fn()
        self.report.timings[what] = time.monotonic() - t0

    def _exclude_destroyed(self, rows: dict[str, sqlite3.Row]) -> None:
        early = {c.sop for c in self.corruptions if c.before_sync}
        for sop in sorted(early & set(self.acked)):
            row = rows.get(sop)
            if row is not None and row["state"] == "lost":
                self.report.destroyed.append(sop)
                a = self.acked.pop(sop)
                self.studies[a.study].remove(sop)
        self.studies = {k: v for k, v in self.studies.items() if v}

    # ---- at rest ----------------------------------------------------------------------------
    def _at_rest(self, rows: dict[str, sqlite3.Row]) -> None:
        r = self.report
        with ThreadPoolExecutor(4) as pool:
            bucket = dict(
                zip(self.acked, pool.map(self._bucket_hash, self.acked.values()), strict=True)
            )
        for sop, a in self.acked.items():
            row = rows.get(sop)
            if row is None:
                r.problem("not in the index", sop)
                continue
            r.states_before[row["state"]] += 1
            if row["state"] == "lost":
                r.problem("state lost", sop)
            cache, obj = _file_hash(self.cache_dir / row["path"]), bucket[sop]
            cache_ok, bucket_ok = cache == a.sha256, obj == a.sha256
            r.at_rest[_verdict("cache file", cache, cache_ok)] += 1
            r.at_rest[_verdict("bucket object", obj, bucket_ok)] += 1
            if obj is not None and not bucket_ok:
                r.problem("bucket object differs", sop)
            if row["state"] in CLOUD_VERIFIED and not bucket_ok:
                r.problem("verified state without an intact bucket object", sop)
            if not (cache_ok or bucket_ok):
                r.problem("no intact copy at rest", sop)

    def _bucket_hash(self, a: Acked) -> str | None:
        try:
            with self.bucket.open(instance_key(a.study, a.series, a.sop)) as fh:
                return dataset_sha256(fh.read())
        except NotFound:
            return None

    # ---- C-FIND and QIDO --------------------------------------------------------------------
    def _cfind(self) -> None:
        """Every acknowledged instance is found. A miss is asked again (twice): one that the
        edge answers on the re-query is reported as a transient miss with the client's count of
        pending responses without an identifier (the 30-minute run of 2026-12-06 had one; the
        edge's own log showed it had sent every match); a miss that stays is a problem."""
        for study, sops in self.studies.items():
            found = self.qr.find_sops(study)
            missed = [s for s in sops if s not in found]
            for _ in range(2):
                if not missed:
                    break
                found = self.qr.find_sops(study)
                transient = [s for s in missed if s in found]
                missed = [s for s in missed if s not in found]
                for sop in transient:
                    self.report.notes.append(
                        f"C-FIND transient miss of {sop} (found on re-query; pending responses "
                        f"without an identifier so far: {self.qr.pending_without_identifier})"
                    )
            for sop in missed:
                self.report.problem("C-FIND missing", sop)

    def _qido(self, timeout_s: float) -> None:
        """The cloud's catalog lags the journal by a poll: ask again until the deadline."""
        pending = dict(self.studies)
        deadline = time.monotonic() + timeout_s
        rounds = 0
        while pending:
            rounds += 1
            for study in list(pending):
                got = qido_sops(*self.qido, study)
                if set(pending[study]) <= got:
                    del pending[study]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(2.0)  # the catalog poll interval
        self.report.notes.append(f"QIDO-RS complete after {rounds} round(s)")
        for study, sops in pending.items():
            got = qido_sops(*self.qido, study)
            for sop in sops:
                if sop not in got:
                    self.report.problem("QIDO-RS missing", sop)

    # ---- C-MOVE -----------------------------------------------------------------------------
    def _cmove(self) -> None:
        """Each study once; a study with a miss is moved a second time, and both are told."""
        r = self.report
        self.dest.take()
        for study, sops in self.studies.items():
            expected = [self.acked[s] for s in sops]
            same, missing, differ = self._move(study, expected)
            if missing or differ:
                r.moves["studies needing a second C-MOVE"] += 1
                r.moves["instances missing at the first C-MOVE"] += len(missing)
                r.notes.append(
                    f"first C-MOVE of {study}: {len(missing)} missing, {len(differ)} differ"
                )
                same, missing, differ = self._move(study, expected)
            r.moves["instances identical"] += same
            for sop in missing:
                r.problem("C-MOVE missing", sop)
            for sop in differ:
                r.problem("C-MOVE bytes differ", sop)

    def _move(self, study: str, expected: list[Acked]) -> tuple[int, list[str], list[str]]:
        res = self.qr.move_study(study)
        self.report.moves["moves"] += 1
        destroyed = set(self.report.destroyed)
        on_destroyed = sum(1 for u in res.failed_uids if u in destroyed)
        self.report.moves["sub-operations failed"] += res.failed - on_destroyed
        self.report.moves["sub-operations failed on destroyed instances"] += on_destroyed
        if res.status is None:
            self.report.moves["moves without a final status"] += 1
        return compare(self.dest.take(), expected)

    def _after_moves(self) -> None:
        """States after the moves, and what became of each file corrupted after its sync."""
        r = self.report
        rows = index_rows(self.index)
        for sop in self.acked:
            row = rows.get(sop)
            r.states_after[row["state"] if row else "missing"] += 1
        for c in self.corruptions:
            if c.before_sync or c.sop not in self.acked:
                continue
            row = rows.get(c.sop)
            h = _file_hash(self.cache_dir / row["path"]) if row else None
            if h is None:
                r.at_rest["corrupted (synced): no cache file now"] += 1
            elif h == self.acked[c.sop].sha256:
                r.at_rest["corrupted (synced): cache file intact now"] += 1
            else:
                r.at_rest["corrupted (synced): cache file still damaged"] += 1
                if row is not None and row["state"] in ("synced", "cached"):
                    r.notes.append(f"{c.sop}: damaged cache file left after its study's C-MOVE")


def _verdict(what: str, digest: str | None, ok: bool) -> str:
    return f"{what} " + ("missing" if digest is None else "intact" if ok else "damaged")


def _file_hash(path: Path) -> str | None:
    try:
        return dataset_sha256(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:  # the damage hit the preamble's DICM or the file meta
        return "unparsable"
