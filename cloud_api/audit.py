"""The audit trail: an append-only JSON-lines log whose records are hash-chained.

Each record carries `seq` (1, 2, ...), `prev` (the previous record's hash) and `hash`
(SHA-256 of the record's canonical JSON without `hash`). Editing a record breaks its hash,
deleting one breaks the next record's `prev` and the `seq` run, reordering breaks both. A
truncated tail is not detectable from the file alone; the copies shipped to the bucket
(`audit/cloud_api/<date>/<replica>-<first seq>.jsonl`, create-only) are the second witness and
`verify_store` checks them the same way.

Records never contain patient names, IDs or birth dates: the study UID is the handle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ObjectExists
from shared.keys import audit_key
from shared.store.base import ObjectStore

log = logging.getLogger("hpacs.cloud.audit")

SERVICE = "cloud_api"
GENESIS = "0" * 64


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based line in the checked stream
    seq: int | None
    reason: str


def verify_records(records: Iterable[dict[str, Any]]) -> list[Problem]:
    """Every break in the chain; an empty list means the log is intact."""
    problems: list[Problem] = []
    prev, expected_seq = GENESIS, 1
    for n, rec in enumerate(records, start=1):
        if "corrupt" in rec:  # unparseable: a torn write at a crash, or tampering; the
            problems.append(Problem(n, None, "unreadable record"))  # next link tells which
            continue
        seq = rec.get("seq")
        if rec.get("hash") != record_hash(rec):
            problems.append(Problem(n, seq, "record content does not match its hash (edited)"))
        if seq != expected_seq:
            problems.append(
                Problem(
                    n,
                    seq,
                    f"sequence {seq} where {expected_seq} was expected (deleted or reordered)",
                )
            )
        if rec.get("prev") != prev:
            problems.append(Problem(n, seq, "previous-hash link broken (deleted or reordered)"))
        prev = str(rec.get("hash", ""))
        expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1
    return problems


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    yield {"corrupt": line.strip()[:200]}


class AuditLog:
    """Appends chained records to `<data_dir>/audit.jsonl`; one writer per replica."""

    def __init__(self, data_dir: str | Path, replica: str = "") -> None:
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "audit.jsonl"
        self.shipped_path = self.dir / "audit.shipped"
        self.replica = replica or _replica_id(self.dir)
        self._lock = threading.Lock()
        self._seq, self._prev = 0, GENESIS
        last = _last_record(self.path)  # resume the chain after a restart
        if last is not None:
            self._seq, self._prev = int(last["seq"]), str(last.get("hash", ""))
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held for the process)
        if self._fh.tell() > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # a torn last write: never glue a record onto it
                    self._fh.write("\n")

    def record(
        self,
        *,
        action: str,
        outcome: str,
        token: str = "",
        role: str = "",
        client: str = "",
        study_uid: str = "",
        status: int = 0,
        detail: str = "",
    ) -> dict[str, Any]:
        """Append one event (time, who, from where, what, which study, result)."""
        with self._lock:
            rec: dict[str, Any] = {
                "seq": self._seq + 1,
                "time": round(time.time(), 6),
                "replica": self.replica,
                "token": token,
                "role": role,
                "client": client,
                "action": action,
                "study_uid": study_uid,
                "outcome": outcome,
                "status": status,
                "detail": detail[:200],
                "prev": self._prev,
            }
            rec["hash"] = record_hash(rec)
            self._fh.write(json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n")
            self._fh.flush()
            self._seq, self._prev = rec["seq"], rec["hash"]
            return rec

    def sync(self) -> None:
        with self._lock:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def ship(self, store: ObjectStore) -> int:
        """Upload records not yet shipped as one create-only object; returns how many.

        `audit.shipped` holds "<last seq> <byte offset>", so each shipment reads only the new
        tail of the log, however long the log has grown."""
        self.sync()
        shipped, offset = 0, 0
        if self.shipped_path.exists():
            fields = self.shipped_path.read_text().split()
            shipped = int(fields[0])
            offset = int(fields[1]) if len(fields) > 1 else 0
        lines, last = [], shipped
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # a record being written: ship it next time
                offset += len(raw)
                if not raw.strip():
                    continue
                rec = json.loads(raw)
                if rec.get("seq", 0) > shipped:
                    lines.append(raw)
                    last = rec["seq"]
        if not lines:
            return 0
        first = json.loads(lines[0])
        date = time.strftime("%Y%m%d", time.gmtime(first["time"]))
        key = audit_key(SERVICE, date, f"{self.replica}-{first['seq']:012d}.jsonl")
        try:
            store.put(key, b"".join(lines), content_type="application/x-ndjson")
        except ObjectExists:
            log.warning("audit object already shipped key=%s", key)
        tmp = self.shipped_path.with_suffix(".tmp")
        tmp.write_text(f"{last} {offset}")
        os.replace(tmp, self.shipped_path)
        return len(lines)


def verify_store(store: ObjectStore, replica: str) -> list[Problem]:
    """Verify one replica's shipped audit objects, concatenated in sequence order."""
    keys = []
    for info in store.list(f"audit/{SERVICE}/"):
        name = info.key.rsplit("/", 1)[-1]
        if name.startswith(replica + "-"):
            keys.append((int(name[len(replica) + 1 :].split(".")[0]), info.key))

    def records() -> Iterator[dict[str, Any]]:
        for _, key in sorted(keys):
            with store.open(key) as fh:
                for line in fh.read().decode().splitlines():
                    if line.strip():
                        yield json.loads(line)

    return verify_records(records())


def _last_record(path: Path, tail_bytes: int = 65536) -> dict[str, Any] | None:
    """The last complete record, read from the end of the file (the log only grows)."""
    if not path.exists():
        return None
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        while True:
            start = max(0, size - tail_bytes)
            fh.seek(start)
            lines = fh.read().split(b"\n")
            if start > 0:
                lines = lines[1:]  # the first one may be cut
            for raw in reversed(lines):
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue  # empty, or a torn last write
                if isinstance(rec, dict) and isinstance(rec.get("seq"), int):
                    return rec
            if start == 0:
                return None
            tail_bytes *= 4


def _replica_id(data_dir: Path) -> str:
    """A stable id per data directory, so each replica's chain has its own name in the bucket."""
    p = data_dir / "replica_id"
    if p.exists():
        return p.read_text().strip()
    rid = "r" + os.urandom(4).hex()
    p.write_text(rid)
    return rid
