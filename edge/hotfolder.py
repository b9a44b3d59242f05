"""The hot folder: files dropped under `edge.import_dir` are ingested, then moved aside.

Events are hints, never the source of truth: watchdog tells us where to look sooner, but a
full rescan at start and every `import_rescan_s` finds whatever an event missed (overflowed
inotify queues, network shares without events, files present before start). A file is taken
only once it has stopped growing: the same size and mtime on two looks at least
`import_settle_s` apart, and an mtime that old. It goes through the one ingest path
(`Ingestor.ingest_path`, which refuses a copy whose source changed while it was read or since
that settled look, and the acceptance rule, which refuses a truncated object), then to
`done/<same relative path>`, or to `failed/...` with a `.reason` file beside it. A file that
changed after it was ingested is not moved: it settles again and is taken again (same bytes:
a duplicate, done/; other bytes: the duplicates policy decides, a conflict goes to failed/).
DICOMDIR media layouts work: files need no `.dcm` suffix, and the DICOMDIR index file itself
is moved to done/ without being ingested.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from edge.ingest import Ingestor
from shared.errors import IndexUnavailable, InvalidDataset, OutOfResources, PacsError
from shared.rows import Origin

log = logging.getLogger("hpacs.edge.hotfolder")

DONE, FAILED = "done", "failed"
# Names writers use while a file is incomplete; they are renamed when finished.
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart")


def is_candidate(rel: Path) -> bool:
    """Whether a path relative to the hot folder is ours to ingest (pure)."""
    if not rel.parts or rel.parts[0] in (DONE, FAILED):
        return False
    if any(p.startswith(".") for p in rel.parts):
        return False
    return not rel.name.lower().endswith(PARTIAL_SUFFIXES)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic time the signature was first seen


class _Hints(FileSystemEventHandler):
    def __init__(self, folder: HotFolder) -> None:
        self.folder = folder

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            self.folder.rescan_soon()
            return
        path = getattr(event, "dest_path", "") or event.src_path
        self.folder.hint(Path(os.fsdecode(path)))


class HotFolder:
    def __init__(
        self,
        root: str | Path,
        ingestor: Ingestor,
        *,
        settle_s: float = 2.0,
        rescan_s: float = 30.0,
        watch: bool = True,
        retry_s: float = 30.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.ingestor = ingestor
        self.settle_s = settle_s
        self.rescan_s = rescan_s
        self.watch = watch
        self.retry_s = retry_s  # after a full disk or a busy index, before trying a file again
        self.counts = {"stored": 0, "duplicate": 0, "failed": 0}
        self.deferred = 0
        self._seen: dict[Path, _Seen] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rescan = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Observer | None = None  # type: ignore[valid-type]

    # ---- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        for d in (self.root, self.root / DONE, self.root / FAILED):
            d.mkdir(parents=True, exist_ok=True)
        if self.watch:
            observer = Observer()
            observer.schedule(_Hints(self), str(self.root), recursive=True)
            observer.daemon = True
            observer.start()
            self._observer = observer
        self._thread = threading.Thread(target=self._run, name="hotfolder", daemon=True)
        self._thread.start()
        log.info("hot folder watching path=%s settle_s=%s", self.root, self.settle_s)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(10)
        if self._thread is not None:
            self._thread.join(30)

    def hint(self, path: Path) -> None:
        try:
            rel = path.resolve().relative_to(self.root)
        except ValueError:
            return
        if is_candidate(rel):
            with self._lock:
                self._seen.setdefault(self.root / rel, _Seen(-1, -1, time.monotonic()))
            self._wake.set()

    def rescan_soon(self) -> None:
        self._rescan.set()
        self._wake.set()

    def _run(self) -> None:
        next_scan = 0.0
        while not self._stop.is_set():
            try:
                if self._rescan.is_set() or time.monotonic() >= next_scan:
                    self._rescan.clear()
                    self.scan()
                    next_scan = time.monotonic() + self.rescan_s
                self.process_ready()
            except Exception:  # keep watching after an unexpected error
                log.exception("hot folder pass failed path=%s", self.root)
            with self._lock:
                pending = bool(self._seen)
            self._wake.wait(min(self.settle_s / 2, 0.5) if pending else self.rescan_s)
            self._wake.clear()

    # ---- one pass ----------------------------------------------------------------------
    def scan(self) -> None:
        """Look at every file: the safety net under the event hints."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if d not in (DONE, FAILED)]
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                self.hint(here / name)
            if not filenames and not dirnames and here != self.root:
                _remove_empty_parents(here, self.root, self.settle_s)

    def process_ready(self) -> int:
        """Ingest every file that has stopped growing; returns how many were handled."""
        now = time.monotonic()
        ready = []
        with self._lock:
            for path, seen in list(self._seen.items()):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    del self._seen[path]
                    continue
                if (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                    self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now)
                elif now - seen.since >= self.settle_s and time.time() - st.st_mtime >= (
                    self.settle_s
                ):
                    ready.append((path, seen))
        for path, seen in ready:
            if self._stop.is_set():
                break
            self._take(path, seen)
        return len(ready)

    def _take(self, path: Path, seen: _Seen) -> None:
        rel = path.relative_to(self.root)
        if rel.name.upper() == "DICOMDIR":
            self._move(path, DONE)
            return
        try:
            result = self.ingestor.ingest_path(
                path, Origin("hotfolder"), expect=(seen.size, seen.mtime_ns)
            )
        except PacsError as exc:
            if isinstance(exc, InvalidDataset) and self._changed(path, seen):
                return  # still being written after all: look again later
            if isinstance(exc, OutOfResources | IndexUnavailable):
                # Our problem, not the file's: keep it and try again later.
                self.deferred += 1
                log.warning("hot folder ingest deferred path=%s error=%s", rel, exc)
                with self._lock:
                    self._seen[path] = _Seen(
                        seen.size, seen.mtime_ns, time.monotonic() + self.retry_s
                    )
                return
            self.counts["failed"] += 1
            log.warning("hot folder file failed path=%s error=%s hint=%s", rel, exc, exc.hint)
            self._move(path, FAILED, f"{type(exc).__name__}: {exc}\n{exc.hint}\n")
            return
        key = "duplicate" if result.outcome.value == "duplicate" else "stored"
        self.counts[key] += 1
        if self._changed(path, seen):
            # Written to again after the copy we stored: look at it again once it settles.
            log.warning(
                "hot folder file changed after it was ingested path=%s sop_instance_uid=%s; "
                "it is taken again once it settles",
                rel,
                result.header.sop_instance_uid,
            )
            return
        log.info(
            "hot folder file ingested path=%s outcome=%s sop_instance_uid=%s",
            rel,
            result.outcome.value,
            result.header.sop_instance_uid,
        )
        self._move(path, DONE)

    def _changed(self, path: Path, seen: _Seen) -> bool:
        try:
            st = path.stat()
        except FileNotFoundError:
            return True
        return (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns)

    def _move(self, path: Path, where: str, reason: str = "") -> None:
        rel = path.relative_to(self.root)
        dest = _free_name(self.root / where / rel)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            if reason:
                dest.with_name(dest.name + ".reason").write_text(reason)
        except OSError as exc:
            log.error("hot folder cannot move path=%s to=%s error=%s", rel, where, exc)
            return  # stays in _seen: retried, and ingest answers duplicate next time
        with self._lock:
            self._seen.pop(path, None)


def _free_name(dest: Path) -> Path:
    """`dest`, or `dest.1`, `dest.2`... when the same name was dropped before."""
    candidate, n = dest, 0
    while candidate.exists() or candidate.with_name(candidate.name + ".reason").exists():
        n += 1
        candidate = dest.with_name(f"{dest.name}.{n}")
    return candidate


def _remove_empty_parents(folder: Path, root: Path, settle_s: float) -> None:
    """Tidy directories a media layout leaves behind: empty (rmdir is atomic) and quiet for
    `settle_s`, so a copy still creating files in them is not disturbed."""
    while folder != root and root in folder.parents:
        try:
            if time.time() - folder.stat().st_mtime < settle_s:
                return
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
