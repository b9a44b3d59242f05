"""Verify an audit chain (`shared.audit`) against its key and the witnesses in the bucket.

One pass over the local files (every rotated file, then the current one) checks each record's
MAC, its `seq` and its link to the previous record, and compares the records at checkpointed
seqs with the checkpoints listed from the bucket; a local log that ends before the last
checkpoint was truncated. With `segments`, the shipped copies are walked alongside: their own
chain is checked, each local record is compared with its shipped original (naming the first one
that differs, even when whoever changed it held the key), and shipped records beyond the local
end are a truncation.

Every front end (the CLI, `/api/audit/verify`, the console) shows the same `Report`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from shared.audit import GENESIS, AuditKey, read_lines
from shared.errors import ObjectStoreError
from shared.keys import audit_checkpoints_prefix
from shared.store.base import ObjectStore

MAX_PROBLEMS = 200  # kept in a report; the rest are counted
EDITED = "record does not match its MAC (edited, or sealed without the key)"
BROKEN_LINK = "link to the previous record broken (deleted or reordered)"

Located = tuple[str, dict[str, Any]]  # (where: "file:line" or "key:line", record)


@dataclass(frozen=True)
class Problem:
    kind: str  # edited, deleted, reordered, unreadable, rewritten, truncated, key, unverified
    seq: int | None
    where: str
    reason: str

    def line(self) -> str:
        seq = f" seq {self.seq}" if self.seq is not None else ""
        return f"{self.where}{seq}: {self.reason}"


@dataclass
class Report:
    replica: str
    scope: str  # "local + checkpoints" or "local + checkpoints + segments"
    records: int = 0  # local records read
    last_seq: int = 0
    checkpoints: int = 0
    last_checkpoint: int = 0
    shipped: int = 0  # shipped records read (segments only)
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: Problem) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.more_problems += 1

    def summary(self) -> str:
        head = (
            f"replica {self.replica}: {self.records} records (last seq {self.last_seq}), "
            f"{self.checkpoints} checkpoints (last seq {self.last_checkpoint})"
        )
        if self.scope.endswith("segments"):
            head += f", {self.shipped} shipped records read"
        if self.ok:
            return f"OK: {head}"
        n = len(self.problems) + self.more_problems
        return f"FAIL: {head}; {n} problem(s), first: {self.problems[0].line()}"

    def to_json(self, limit: int = 50) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "scope": self.scope,
            "ok": self.ok,
            "records": self.records,
            "last_seq": self.last_seq,
            "checkpoints": self.checkpoints,
            "last_checkpoint": self.last_checkpoint,
            "shipped": self.shipped,
            "summary": self.summary(),
            "problems_total": len(self.problems) + self.more_problems,
            "problems": [
                {"kind": p.kind, "seq": p.seq, "where": p.where, "reason": p.reason}
                for p in self.problems[:limit]
            ],
        }


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    mac: str
    key: str


def list_checkpoints(store: ObjectStore, service: str, replica: str) -> list[Checkpoint]:
    """Every checkpoint of one replica's chain, from the listing alone (the name is the witness)."""
    prefix = audit_checkpoints_prefix(service, replica)
    out = []
    for info in store.list(prefix):
        seq, _, mac = info.key[len(prefix) :].removesuffix(".json").partition("-")
        if seq.isdigit() and len(mac) == 64:
            out.append(Checkpoint(int(seq), mac, info.key))
    return out


def read_local(files: Iterable[tuple[str, BinaryIO]]) -> Iterator[Located]:
    for name, fh in files:
        for n, rec in read_lines(fh):
            yield f"{name}:{n}", rec


def read_shipped(store: ObjectStore, service: str, replica: str) -> Iterator[Located]:
    """One replica's shipped segments in seq order (dated folders sort before checkpoints/)."""
    prefix = f"audit/{service}/"
    keys = []
    for info in store.list(prefix):
        rest = info.key[len(prefix) :]
        if rest.startswith("checkpoints/"):
            break
        name = rest.rsplit("/", 1)[-1]
        first = name.removeprefix(replica + "-").removesuffix(".jsonl")
        if name.startswith(replica + "-") and first.isdigit():
            keys.append((int(first), info.key))
    for _, key in sorted(keys):
        with store.open(key) as fh:
            lines = fh.read().decode("utf-8", errors="replace").splitlines()
        for n, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                yield f"{key}:{n}", rec if isinstance(rec, dict) else {"corrupt": line[:200]}


class ChainCheck:
    """Feeds one stream of records; adds what breaks the chain or contradicts a checkpoint."""

    def __init__(
        self, key: AuditKey, report: Report, witnesses: dict[int, list[Checkpoint]], label: str
    ) -> None:
        self.key, self.report, self.witnesses, self.label = key, report, witnesses, label
        self.prev, self.expected, self.count, self.last_seq = GENESIS, 1, 0, 0
        self.foreign: tuple[int, str, str] | None = None  # (count, first where, key id)

    def _add(self, kind: str, seq: int | None, where: str, reason: str) -> None:
        self.report.add(Problem(kind, seq, self.label + where, reason))

    def feed(self, where: str, rec: dict[str, Any]) -> None:
        self.count += 1
        if "corrupt" in rec:  # a torn write at a crash, or tampering; the next link tells which
            self._add("unreadable", None, where, "unreadable record")
            return
        seq = rec.get("seq")
        if rec.get("key") != self.key.key_id:
            n, first, kid = self.foreign or (0, where, str(rec.get("key")))
            self.foreign = (n + 1, first, kid)
        elif not self.key.check(rec):
            self._add("edited", seq, where, EDITED)
        if seq != self.expected:
            kind = "deleted" if isinstance(seq, int) and seq > self.expected else "reordered"
            what = "deleted" if kind == "deleted" else "reordered or duplicated"
            reason = f"sequence {seq} where {self.expected} was expected ({what})"
            self._add(kind, seq, where, reason)
        if rec.get("prev") != self.prev:
            self._add("deleted", seq, where, BROKEN_LINK)
        for cp in self.witnesses.get(seq, []) if isinstance(seq, int) else []:
            if cp.mac != rec.get("mac"):
                self._add(
                    "rewritten",
                    seq,
                    where,
                    f"differs from checkpoint {cp.key} (the log was rewritten at or before this "
                    "record; `audit verify --bucket` names the first changed one)",
                )
        self.prev = str(rec.get("mac", ""))
        if isinstance(seq, int):
            self.expected, self.last_seq = seq + 1, max(self.last_seq, seq)

    def finish(self, what: str) -> None:
        if self.foreign is not None:
            n, first, kid = self.foreign
            self._add(
                "key",
                None,
                first,
                f"{n} record(s) sealed with key id {kid}, not this key's {self.key.key_id} "
                "(wrong audit key file, or records forged)",
            )
        if self.witnesses:
            top = max(self.witnesses)
            if top > self.last_seq:
                cp = self.witnesses[top][0]
                reason = (
                    f"ends at seq {self.last_seq}, but checkpoint {cp.key} witnessed seq {top}: "
                    f"{top - self.last_seq} record(s) cut (truncated)"
                )
                self.report.add(Problem("truncated", None, what, reason))


class _Shipped:
    """The shipped stream, advanced in step with the local one by seq."""

    def __init__(self, it: Iterator[Located], check: ChainCheck) -> None:
        self._it, self.check = it, check
        self.head: Located | None = next(it, None)
        self.first_diff: tuple[int, str, str] | None = None
        self.diffs = 0

    def _seq(self) -> int:
        assert self.head is not None
        s = self.head[1].get("seq")
        return s if isinstance(s, int) else -1

    def _take(self) -> Located:
        assert self.head is not None
        got = self.head
        self.check.feed(*got)
        self.head = next(self._it, None)
        return got

    def compare(self, where: str, rec: dict[str, Any]) -> None:
        seq = rec.get("seq")
        if not isinstance(seq, int):
            return
        while self.head is not None and self._seq() < seq:
            self._take()
        if self.head is not None and self._seq() == seq:
            swhere, srec = self._take()
            if srec.get("mac") != rec.get("mac") or srec != rec:
                self.diffs += 1
                if self.first_diff is None:
                    self.first_diff = (seq, where, swhere)

    def drain(self) -> tuple[int, int]:
        """Consume the rest; (records beyond the local end, highest seq among them)."""
        n, top = 0, 0
        while self.head is not None:
            seq = self._seq()
            self._take()
            n, top = n + 1, max(top, seq)
        return n, top


def verify(
    files: Iterable[tuple[str, BinaryIO]],
    key: AuditKey,
    *,
    replica: str,
    service: str,
    store: ObjectStore | None,
    segments: bool = False,
) -> Report:
    """The one check behind every front end; without a store only the key is a witness."""
    scope = "local + checkpoints" + (" + segments" if segments else "")
    report = Report(replica=replica, scope=scope if store is not None else "local only")
    witnesses: dict[int, list[Checkpoint]] = {}
    if store is None:
        report.add(Problem("unverified", None, "bucket", "no object store: no checkpoint checked"))
    else:
        try:
            for cp in list_checkpoints(store, service, replica):
                witnesses.setdefault(cp.seq, []).append(cp)
        except ObjectStoreError as exc:
            report.add(Problem("unverified", None, "bucket", f"checkpoints not listed: {exc}"))
    report.checkpoints = sum(map(len, witnesses.values()))
    report.last_checkpoint = max(witnesses, default=0)
    for seq, cps in witnesses.items():
        if len({c.mac for c in cps}) > 1:
            report.add(Problem("rewritten", seq, "bucket", "checkpoints disagree on this record"))
    local = ChainCheck(key, report, witnesses, "")
    shipped = None
    if segments and store is not None:
        stream = read_shipped(store, service, replica)
        shipped = _Shipped(stream, ChainCheck(key, report, witnesses, "bucket "))
    for where, rec in read_local(files):
        local.feed(where, rec)
        if shipped is not None:
            shipped.compare(where, rec)
    report.records, report.last_seq = local.count, local.last_seq
    local.finish("the local log")
    if shipped is not None:
        _finish_shipped(report, local, shipped)
    return report


def _finish_shipped(report: Report, local: ChainCheck, shipped: _Shipped) -> None:
    beyond, top = shipped.drain()
    report.shipped = shipped.check.count
    if shipped.first_diff is not None:
        seq, where, swhere = shipped.first_diff
        more = f" (and {shipped.diffs - 1} later record(s))" if shipped.diffs > 1 else ""
        report.add(
            Problem("rewritten", seq, where, f"differs from the copy shipped in {swhere}{more}")
        )
    if beyond:
        report.add(
            Problem(
                "truncated",
                None,
                "the local log",
                f"ends at seq {local.last_seq}, but the bucket holds records up to seq {top}: "
                f"{beyond} record(s) cut (truncated)",
            )
        )
    shipped.check.finish("the shipped copies")
