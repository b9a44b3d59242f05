"""`hpacs-edge import PATH...`: bulk import of files and folders through the one ingest path.

Walks the paths recursively (DICOMDIR media included; the DICOMDIR file itself is skipped),
ingests each file with `Ingestor.ingest_path`, shows a progress bar on stderr and ends with a
summary of stored / duplicate / rejected with reasons. `--dry-run` parses and compares with
the index without writing anything. The exit code is non-zero when anything was rejected, so a
script can tell a clean migration from one that needs a look.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from edge.ingest import Ingestor, Outcome
from shared import acceptance
from shared.checksum import crc32c_file
from shared.dicom import read_header
from shared.errors import DuplicateConflict, IndexUnavailable, OutOfResources, PacsError
from shared.rows import Origin


@dataclass
class ImportSummary:
    stored: int = 0
    duplicate: int = 0
    replaced: int = 0
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    stopped: str = ""  # why the import stopped early (cache full, index unwritable)

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.stopped

    def render(self, dry_run: bool) -> str:
        verb = "would store" if dry_run else "stored"
        mb = self.bytes / 1e6
        lines = [
            f"{verb} {self.stored}, duplicate {self.duplicate}, "
            + (f"replaced {self.replaced}, " if self.replaced else "")
            + f"rejected {len(self.rejected)} ({self.files} files, {mb:.1f} MB "
            f"in {self.seconds:.1f} s)"
        ]
        if self.rejected:
            lines.append("rejected:")
            lines += [f"  {path}: {reason}" for path, reason in self.rejected]
        if self.stopped:
            lines.append(self.stopped)
        return "\n".join(lines)


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Every regular file under the paths, in a stable order; DICOMDIR index files skipped."""
    for p in map(Path, paths):
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.upper() != "DICOMDIR":
                        yield Path(dirpath) / name
        elif p.name.upper() != "DICOMDIR":
            yield p  # a missing file is reported as rejected by the importer


class Progress:
    """`[  120/4000]   3%  12.4 MB/s  ETA 0:05:12` on one redrawn line (a tty), else a line
    every few seconds, so logs of a scripted import stay readable."""

    def __init__(self, total_files: int, total_bytes: int, stream: TextIO) -> None:
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = -1

    def update(self, files: int, done_bytes: int, final: bool = False) -> None:
        now = time.monotonic()
        if final and self.shown == files and not self.tty:
            return
        if not final and now - self.last < (0.1 if self.tty else 5.0):
            return
        self.last = now
        self.shown = files
        elapsed = max(now - self.started, 1e-6)
        rate = done_bytes / elapsed
        left = max(self.total_bytes - done_bytes, 0)
        eta = _hms(left / rate) if rate > 0 else "--:--:--"
        pct = 100 * done_bytes / self.total_bytes if self.total_bytes else 100.0
        w = len(str(self.total_files))
        line = f"[{files:>{w}}/{self.total_files}] {pct:3.0f}% {rate / 1e6:6.1f} MB/s  ETA {eta}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_import(
    paths: Iterable[str | Path],
    ingestor: Ingestor,
    *,
    dry_run: bool = False,
    progress: TextIO | None = None,
) -> ImportSummary:
    files = list(iter_files(paths))
    sizes = [_size(f) for f in files]
    bar = Progress(len(files), sum(sizes), progress or sys.stderr)
    summary = ImportSummary(files=len(files))
    seen: dict[str, tuple[int, str]] = {}
    t0 = time.monotonic()
    done = 0
    for n, (path, size) in enumerate(zip(files, sizes, strict=True), start=1):
        try:
            if not path.is_file():
                raise OSError("not a regular file or missing")
            if dry_run:
                outcome = _dry_run_one(ingestor, path, seen)
            else:
                outcome = ingestor.ingest_path(path, Origin("import")).outcome
        except (OutOfResources, IndexUnavailable) as exc:
            # The edge's problem, not the files': every further file would fail the same way.
            summary.stopped = f"stopped at {path}: {type(exc).__name__}: {exc}; {exc.hint}"
            break
        except PacsError as exc:
            summary.rejected.append((path, f"{type(exc).__name__}: {exc}"))
        except OSError as exc:
            summary.rejected.append((path, f"unreadable: {exc}"))
        else:
            if outcome is Outcome.STORED:
                summary.stored += 1
            elif outcome is Outcome.REPLACED:
                summary.replaced += 1
            else:
                summary.duplicate += 1
        summary.bytes += size
        done = n
        bar.update(n, summary.bytes)
    bar.update(done, summary.bytes, final=True)
    summary.seconds = time.monotonic() - t0
    return summary


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _dry_run_one(ingestor: Ingestor, path: Path, seen: dict[str, tuple[int, str]]) -> Outcome:
    """What ingest would answer, without writing: accept, parse, compare with the index."""
    accepted = acceptance.check(path)
    if accepted.part10:
        return _compare(ingestor, path, seen)
    with tempfile.TemporaryDirectory() as tmp:  # compare the Part-10 form ingest would store
        part10 = Path(tmp) / "part10.dcm"
        with part10.open("wb") as out:
            acceptance.write_part10(path, accepted, out)
        return _compare(ingestor, part10, seen)


def _compare(ingestor: Ingestor, path: Path, seen: dict[str, tuple[int, str]]) -> Outcome:
    header = read_header(path)
    uid = header.sop_instance_uid
    mine = (path.stat().st_size, crc32c_file(path))
    row = (
        ingestor.db.reader()
        .execute("SELECT size, crc32c FROM instances WHERE sop_instance_uid = ?", (uid,))
        .fetchone()
    )
    known = (row["size"], row["crc32c"]) if row else seen.get(uid)
    seen.setdefault(uid, mine)
    if known is None:
        return Outcome.STORED
    if known == mine:
        return Outcome.DUPLICATE
    if ingestor.duplicates == "replace":
        return Outcome.REPLACED
    raise DuplicateConflict(f"{uid} already stored with different bytes")
