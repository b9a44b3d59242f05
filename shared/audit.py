"""A tamper-evident audit trail for any service: HMAC-chained JSON lines, rotated by size,
shipped create-only to the bucket with a checkpoint per shipment.

Three witnesses, each against a different attacker (docs/admin-guide.md, "Audit trail"):
- **The key.** Each record carries `seq`, `prev` (the previous record's MAC) and `mac`, an
  HMAC-SHA256 of its canonical JSON under a key kept in a separate file (0600) or a KMS. Someone
  who can write the log but not read the key cannot edit, insert or re-chain a record: an
  unkeyed SHA-256 chain could simply be recomputed, a keyed one cannot.
- **Checkpoints.** Every shipment writes `audit/<service>/checkpoints/<replica>-<seq>-<mac>.json`
  create-only (under the bucket's retention policy where there is one). The name alone is the
  witness, so `verify` lists them without reading them: a local record at a checkpointed seq
  must carry that MAC (a rewrite, even by someone holding the key), and the local log must
  reach the last checkpoint (truncation).
- **Segments.** The shipped records themselves (`audit/<service>/<date>/<replica>-<first>.jsonl`)
  are the originals to compare with and to recover from.

Records after the last shipment are protected by the key alone: the ship interval bounds what
a truncation can remove unseen. `shared.audit_verify` checks all of this; this module writes.
The edge (issue 10) reuses it with its site as `service`.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from shared.config import ConfigError
from shared.errors import ObjectExists
from shared.fsutil import durable_rename, fsync_dir, write_atomic
from shared.keys import audit_checkpoint_key, audit_checkpoints_prefix, audit_key
from shared.store.base import ObjectStore

log = logging.getLogger("hpacs.audit")

GENESIS = "0" * 64
KEY_BYTES = 32
CURRENT = "audit.jsonl"
SHIPPED = "audit.shipped"
SEGMENT_MAX_BYTES = 4 * 1024**2  # below the store's multipart limit, where preconditions hold
_ROTATED = re.compile(r"^audit\.(\d{12})\.jsonl$")
# Fields the chain owns; an adapter's event may not set them.
CHAIN_FIELDS = ("seq", "time", "replica", "key", "prev", "mac")


def canonical(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class AuditKey:
    """The HMAC key; `key_id` names it in records without revealing it."""

    secret: bytes
    source: str

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"hpacs-audit-key-id:" + self.secret).hexdigest()[:16]

    def mac(self, record: dict[str, Any]) -> str:
        return hmac.new(self.secret, canonical(record), hashlib.sha256).hexdigest()

    def check(self, record: dict[str, Any]) -> bool:
        return hmac.compare_digest(str(record.get("mac", "")), self.mac(record))


def load_key(ref: str, *, setting: str, default_path: Path, create: bool) -> AuditKey:
    """The key named by a config value: "" (default_path), a path, `file:///path`, or a KMS
    reference (`gcp-kms://...`, refused: not implemented). `create` makes a missing key file
    (serve does, verify never: a new key would verify nothing)."""
    if ref.startswith("gcp-kms://"):
        raise ConfigError(
            setting,
            "KMS audit keys (gcp-kms://) are not implemented in this build (no google-cloud-kms);"
            " use a key file (file:///path, mode 0600) - see docs/admin-guide.md, Audit trail",
        )
    if "://" in ref and not ref.startswith("file://"):
        raise ConfigError(setting, f"must be a path or file:///path, got {ref!r}")
    path = Path(ref.removeprefix("file://")) if ref else default_path
    if create and not path.exists():
        _create_key_file(path)
        log.warning("audit key created path=%s (back it up apart from the audit log)", path)
    try:
        st = path.stat()
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(setting, f"audit key file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(setting, f"audit key file {path} cannot be read: {exc}") from None
    if st.st_mode & 0o077:
        raise ConfigError(
            setting,
            f"audit key file {path} is accessible to group or others "
            f"(mode {st.st_mode & 0o777:04o}); run `chmod 600 {path}`",
        )
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ConfigError(setting, f"audit key file {path} must hold 64 hex digits")
    return AuditKey(bytes.fromhex(text), str(path))


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(os.urandom(KEY_BYTES).hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(path.parent)


def log_files(directory: Path) -> list[Path]:
    """The chain's files in order: rotated ones by their first seq, then the current one."""
    rotated = sorted(p for p in directory.glob("audit.*.jsonl") if _ROTATED.match(p.name))
    current = directory / CURRENT
    return rotated + ([current] if current.exists() else [])


def read_lines(fh: BinaryIO) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of every non-empty line; an unparseable one is `{"corrupt": ...}`."""
    for n, raw in enumerate(fh, start=1):
        line = raw.decode("utf-8", errors="replace").strip()
        if line:
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            yield n, rec if isinstance(rec, dict) else {"corrupt": line[:200]}


@contextmanager
def open_files(paths: list[Path]) -> Iterator[list[tuple[str, BinaryIO]]]:
    """The files opened (name, handle): a rotation after this renames them, the handles stay."""
    with ExitStack() as stack:
        yield [(p.name, stack.enter_context(open(p, "rb"))) for p in paths]


def retire_legacy(directory: Path) -> bool:
    """Move an unkeyed log of an older release aside (`legacy-<time>/`); True if one was."""
    current = directory / CURRENT
    last = _last_record(current)
    if last is None or "mac" in last:
        return False
    dest = directory / f"legacy-{int(time.time())}"
    dest.mkdir()
    for p in [*log_files(directory), directory / SHIPPED]:
        if p.exists():
            os.replace(p, dest / p.name)
    fsync_dir(directory)
    log.warning("unkeyed audit log moved aside path=%s; a keyed chain starts at seq 1", dest)
    return True


@dataclass(frozen=True)
class Shipment:
    """One shipped segment and the checkpoint that witnesses its last record."""

    segment_key: str
    checkpoint_key: str
    first_seq: int
    last_seq: int


class AuditChain:
    """Appends chained records for one service and replica; one writer per directory."""

    def __init__(
        self,
        directory: str | Path,
        key: AuditKey,
        *,
        service: str,
        replica: str,
        max_bytes: int = 64 * 1024**2,
        shared: bool = False,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key, self.service, self.replica = key, service, replica
        self.max_bytes = max_bytes
        self.path = self.dir / CURRENT
        self._lock = threading.Lock()
        # Several processes may append to one directory (the edge's serve and its CLI verbs):
        # then every append holds an flock on `audit.lock` and first catches up with what the
        # others wrote (and renamed), so the chain never forks.
        self._lockfd: int | None = None
        if shared:
            self._lockfd = os.open(self.dir / "audit.lock", os.O_RDWR | os.O_CREAT, 0o600)
        with self._interprocess():
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held)
            self._resume()
            if self._fh.tell() > 0:
                with open(self.path, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":  # a torn last write: never glue a record onto it
                        self._fh.write("\n")
                        self._fh.flush()
            self._end = self._size()

    def _size(self) -> int:
        """Bytes in the current file (others' appends included; our position may lag them)."""
        return os.fstat(self._fh.fileno()).st_size

    def _resume(self) -> None:
        """seq, prev and the current file's first seq from what is on disk."""
        self._seq, self._prev = 0, GENESIS
        last = _last_record(self.path)
        if last is None:  # the current file is new, or a rotation just happened
            files = log_files(self.dir)
            last = _last_record(files[-1]) if files and files[-1] != self.path else None
        if last is not None:  # resume the chain after a restart
            self._seq, self._prev = int(last["seq"]), str(last.get("mac", ""))
        self._first = self._seq + 1
        if self.path.exists():
            with open(self.path, "rb") as fh:
                self._first = _first_seq(CURRENT, fh) or self._first

    @contextmanager
    def _interprocess(self) -> Iterator[None]:
        if self._lockfd is None:
            yield
            return
        fcntl.flock(self._lockfd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lockfd, fcntl.LOCK_UN)

    def _follow(self) -> None:
        """Catch up with another process's appends or rotation (caller holds both locks)."""
        if self._lockfd is None:
            return
        try:
            on_disk = os.stat(self.path).st_ino
        except FileNotFoundError:
            on_disk = -1
        if on_disk != os.fstat(self._fh.fileno()).st_ino:  # renamed away by another writer
            self._fh.close()
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        if self._size() != self._end:
            self._resume()
            self._end = self._size()

    @property
    def seq(self) -> int:
        return self._seq

    def append(self, event: dict[str, Any]) -> dict[str, Any]:
        """Seal one event into the chain and write it; returns the record as written."""
        clash = [k for k in CHAIN_FIELDS if k in event]
        if clash:
            raise ValueError(f"event sets chain fields {clash}")
        with self._lock, self._interprocess():
            self._follow()
            rec: dict[str, Any] = {
                **event,
                "seq": self._seq + 1,
                "time": round(time.time(), 6),
                "replica": self.replica,
                "key": self.key.key_id,
                "prev": self._prev,
            }
            rec["mac"] = self.key.mac(rec)
            self._fh.write(json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n")
            self._fh.flush()
            self._seq, self._prev = rec["seq"], rec["mac"]
            if self._fh.tell() >= self.max_bytes:
                self._rotate()
            self._end = self._size()
            return rec

    def _rotate(self) -> None:
        """Close the current file under its first seq's name; the chain runs on in a new one."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        durable_rename(self.path, self.dir / f"audit.{self._first:012d}.jsonl")
        self._first = self._seq + 1
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        fsync_dir(self.dir)

    def sync(self) -> None:
        with self._lock:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            if self._lockfd is not None:
                os.close(self._lockfd)
                self._lockfd = None

    def files(self) -> list[Path]:
        with self._lock:
            return log_files(self.dir)

    @contextmanager
    def opened(self) -> Iterator[list[tuple[str, BinaryIO]]]:
        """Every file of the chain, opened under the writer's lock so that no rotation can
        rename one between listing and opening (shipping and verify run in worker threads)."""
        with ExitStack() as stack:
            with self._lock, self._interprocess():
                self._fh.flush()
                files = log_files(self.dir)
                handles: list[tuple[str, BinaryIO]] = [
                    (p.name, stack.enter_context(open(p, "rb"))) for p in files
                ]
            yield handles

    def ship(self, store: ObjectStore) -> list[Shipment]:
        """Upload the records not shipped yet: segments of at most SEGMENT_MAX_BYTES, each
        followed by its checkpoint, both create-only. Resumes where the last call stopped
        (`audit.shipped`: last seq, and the byte offset in the file that starts at `first`)."""
        self.sync()
        state = _load_state(self.dir / SHIPPED) or self._resume_from(store)
        out: list[Shipment] = []
        batch: list[bytes] = []
        size = 0
        for first, offset, raw in self._unshipped(state):
            batch.append(raw)
            size += len(raw)
            state = {"seq": json.loads(raw)["seq"], "first": first, "offset": offset}
            if size >= SEGMENT_MAX_BYTES:
                out.append(self._ship_segment(store, batch, state))
                batch, size = [], 0
        if batch:
            out.append(self._ship_segment(store, batch, state))
        return out

    def _resume_from(self, store: ObjectStore) -> dict[str, int]:
        """No usable state file: go on after the last checkpoint in the bucket (first = -1:
        no offset to trust, files are read from their start)."""
        prefix = audit_checkpoints_prefix(self.service, self.replica)
        seqs = [int(i.key[len(prefix) :].split("-", 1)[0]) for i in store.list(prefix)]
        if seqs:
            log.warning("audit ship state lost; resuming after checkpoint seq=%d", max(seqs))
        return {"seq": max(seqs, default=0), "first": -1, "offset": 0}

    def _unshipped(self, state: dict[str, int]) -> Iterator[tuple[int, int, bytes]]:
        """(first seq of the file, offset after the line, line) for records past state.seq."""
        with self.opened() as handles:
            files = [(_first_seq(name, fh), fh) for name, fh in handles]
            for i, (first, fh) in enumerate(files):
                nxt = files[i + 1][0] if i + 1 < len(files) else None
                if first is None or (nxt is not None and nxt - 1 <= state["seq"]):
                    continue  # empty, or wholly shipped
                offset = state["offset"] if first == state["first"] else 0
                fh.seek(offset)
                for raw in fh:
                    if not raw.endswith(b"\n"):
                        break  # a record being written: ship it next time
                    offset += len(raw)
                    try:
                        seq = json.loads(raw).get("seq", 0)
                    except (ValueError, AttributeError):
                        continue  # unreadable: verify reports it; the chain shows the gap
                    if isinstance(seq, int) and seq > state["seq"]:
                        yield first, offset, raw

    def _ship_segment(
        self, store: ObjectStore, lines: list[bytes], state: dict[str, int]
    ) -> Shipment:
        head, tail = json.loads(lines[0]), json.loads(lines[-1])
        date = time.strftime("%Y%m%d", time.gmtime(head["time"]))
        seg = audit_key(self.service, date, f"{self.replica}-{head['seq']:012d}.jsonl")
        _put_once(store, seg, b"".join(lines), "application/x-ndjson")
        ck = audit_checkpoint_key(self.service, self.replica, tail["seq"], tail["mac"])
        body = {
            "service": self.service,
            "replica": self.replica,
            "seq": tail["seq"],
            "mac": tail["mac"],
            "count": len(lines),
            "time": round(time.time(), 6),
            "key": self.key.key_id,
            "segment": seg,
        }
        _put_once(store, ck, json.dumps(body, sort_keys=True).encode(), "application/json")
        write_atomic(self.dir / SHIPPED, json.dumps(state).encode())
        return Shipment(seg, ck, head["seq"], tail["seq"])


def _put_once(store: ObjectStore, key: str, data: bytes, content_type: str) -> None:
    """Create-only; an existing object is our own earlier attempt (a crash before the state
    file moved on) unless its size differs, which only tampering or a bug can cause."""
    try:
        store.put(key, data, content_type=content_type)
    except ObjectExists:
        info = store.head(key)
        if info is None or info.size != len(data):
            log.warning("audit object already exists with other content key=%s", key)


def _load_state(path: Path) -> dict[str, int] | None:
    try:
        data = json.loads(path.read_text())
        return {"seq": int(data["seq"]), "first": int(data["first"]), "offset": int(data["offset"])}
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        log.warning("audit ship state unreadable path=%s", path)
        return None


def _first_seq(name: str, fh: BinaryIO) -> int | None:
    """A rotated file's first seq is in its name; the current file's in its first record."""
    m = _ROTATED.match(name)
    if m:
        return int(m.group(1))
    fh.seek(0)
    try:
        for raw in fh:
            try:
                seq = json.loads(raw).get("seq")
            except (ValueError, AttributeError):
                continue
            if isinstance(seq, int):
                return seq
        return None
    finally:
        fh.seek(0)


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
