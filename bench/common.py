"""Benchmark plumbing: datasets, the receivers (hpacs-edge, DCMTK storescp, Orthanc), storescu.

Every receiver runs as its own process on 127.0.0.1 with free ports, its storage in a fresh
directory on the same disk, and TCP_NODELAY on (DCMTK, and Orthanc which links DCMTK, read the
`TCP_NODELAY` environment variable; hpacs-edge sets it on accepted sockets).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.synthetic import StudySpec, iter_study  # noqa: E402

ENV = dict(os.environ, TCP_NODELAY="1")
CALLED_AE = "BENCH"
CALLING_AE = "STORESCU"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Poll until the receiver accepts connections (no fixed sleeps)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
    raise TimeoutError(f"port {port} not open after {timeout_s}s")


# ---- datasets ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    name: str
    files: list[Path]

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def make_dataset(name: str, folder: Path, count: int, rows: int, columns: int) -> Dataset:
    """`count` synthetic instances of rows x columns 16-bit pixels, 100 per series."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    per_series = 100
    study = 0
    while len(files) < count:
        study += 1
        n = min(per_series, count - len(files))
        spec = StudySpec(
            patient_id=f"B{study:04d}",
            instances_per_series=n,
            rows=rows,
            columns=columns,
        )
        for ds in iter_study(spec):
            p = folder / f"{len(files):06d}.dcm"
            ds.save_as(p, enforce_file_format=True)
            files.append(p)
    return Dataset(name, files)


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    return [list(files[i::parts]) for i in range(parts)]


def write_big_object(path: Path, size_bytes: int) -> Path:
    """A multi-frame CT whose pixel data (written in chunks) makes the file ~size_bytes.

    Built by streaming the Pixel Data element after a pydicom-written header, so the benchmark
    itself never holds the object in memory.
    """
    frame = 512 * 512 * 2
    frames = max(1, size_bytes // frame)
    spec = StudySpec(instances_per_series=1, rows=512, columns=512)
    ds = next(iter_study(spec))
    del ds.PixelData
    ds.NumberOfFrames = frames
    ds.save_as(path, enforce_file_format=True)
    chunk = bytes(range(256)) * (frame // 256)
    with open(path, "ab") as fh:
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * frame))
        for _ in range(frames):
            fh.write(chunk)
    return path


# ---- receivers --------------------------------------------------------------------------
class Receiver:
    """A receiver process with a fresh storage directory; `start()` returns when it listens."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path = workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files for self.port into self.workdir."""

    def start(self) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        self.port = free_port()
        self.prepare()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=self.workdir
            )
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stored(self) -> int:
        """How many instances landed (a sanity check that the run really stored them)."""
        raise NotImplementedError


class Edge(Receiver):
    """`hpacs-edge serve`; with `sync`, the sync agent runs beside it as `make up` runs it
    (`hpacs-sync run` uploading to the GCS emulator, deploy/gcs_emulator.py)."""

    name = "hpacs-edge"

    def __init__(
        self,
        workdir: Path,
        acceptors: int | str = "auto",
        index_synchronous: str = "full",
        sync: bool = False,
    ) -> None:
        super().__init__(workdir)
        self.acceptors = acceptors
        self.index_synchronous = index_synchronous
        self.sync = sync
        self.emulator_port = 0
        self._side: list[subprocess.Popen[bytes]] = []

    @property
    def acceptor_count(self) -> int:
        if isinstance(self.acceptors, int):
            return self.acceptors
        return max(1, len(os.sched_getaffinity(0)))

    def prepare(self) -> None:
        acceptors = f'"{self.acceptors}"' if isinstance(self.acceptors, str) else self.acceptors
        sync = ""
        if self.sync:
            self.emulator_port = free_port()
            sync = (
                '[sync]\nstore_url = "gs://bench"\nsite = "bench"\n'
                f'emulator_host = "http://127.0.0.1:{self.emulator_port}"\n'
            )
        (self.workdir / "hpacs.toml").write_text(
            "[edge]\n"
            f'ae_title = "{CALLED_AE}"\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'data_dir = "{self.workdir / "data"}"\nmin_free_bytes = 0\n'
            f"acceptors = {acceptors}\n"
            f'index_synchronous = "{self.index_synchronous}"\n'
            'log_level = "WARNING"\n'
            "http_port = 0\n"
            "[edge.tls]\nport = 0\n"
            f"{sync}"
            f'[[nodes]]\nae_title = "{CALLING_AE}"\nhost = "127.0.0.1"\nport = 104\n'
            'permissions = ["echo", "store"]\n'
        )

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + 60
        while listeners(self.port) < self.acceptor_count:  # every acceptor process listens
            if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                raise RuntimeError(f"hpacs-edge acceptors did not all listen; see {self.log}")
            time.sleep(0.05)
        if self.sync:
            self._start_sync()

    def _start_sync(self) -> None:
        venv = ROOT / ".venv" / "bin"
        log = open(self.workdir / "sync.log", "wb")  # noqa: SIM115 - closed with the process
        gcs = subprocess.Popen(
            [str(venv / "python"), str(ROOT / "deploy" / "gcs_emulator.py"), "--port",
             str(self.emulator_port), "--data", str(self.workdir / "gcs"), "--bucket", "bench"],
            stdout=log, stderr=subprocess.STDOUT, env=ENV,
        )  # fmt: skip
        self._side.append(gcs)
        deadline = time.monotonic() + 30
        while b"bucket bench" not in (self.workdir / "sync.log").read_bytes():
            if time.monotonic() > deadline or gcs.poll() is not None:
                raise RuntimeError(f"GCS emulator did not start; see {self.workdir / 'sync.log'}")
            time.sleep(0.05)
        agent = subprocess.Popen(
            [str(venv / "hpacs-sync"), "--config", str(self.workdir / "hpacs.toml"), "run"],
            stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=self.workdir,
        )  # fmt: skip
        self._side.append(agent)

    def stop(self) -> None:
        for p in reversed(self._side):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._side = []
        super().stop()

    def command(self) -> list[str]:
        exe = ROOT / ".venv" / "bin" / "hpacs-edge"
        return [str(exe), "--config", str(self.workdir / "hpacs.toml"), "serve"]

    def stored(self) -> int:
        import sqlite3

        conn = sqlite3.connect(self.workdir / "data" / "index.sqlite")
        try:
            return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])
        finally:
            conn.close()


class StoreSCP(Receiver):
    name = "storescp"

    def command(self) -> list[str]:
        out = self.workdir / "out"
        out.mkdir(exist_ok=True)
        # --fork: one child per association, as a multi-association server must.
        return ["storescp", "--fork", "-aet", CALLED_AE, "-od", str(out), "+B", str(self.port)]

    def stored(self) -> int:
        return sum(1 for _ in (self.workdir / "out").iterdir())


class Orthanc(Receiver):
    name = "orthanc"

    def prepare(self) -> None:
        self.http_port = free_port()
        cfg = {
            "Name": "bench",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "DicomAet": CALLED_AE,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {"storescu": [CALLING_AE, "127.0.0.1", 104]},
            "SyncStorageArea": True,
            "Plugins": [],
            "StableAge": 3600,
            "LogExportedResources": False,
            "KeepAlive": True,
        }
        (self.workdir / "orthanc.json").write_text(json.dumps(cfg, indent=1))

    def command(self) -> list[str]:
        return ["Orthanc", str(self.workdir / "orthanc.json")]

    def stored(self) -> int:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/statistics") as r:
            return int(json.load(r)["CountInstances"])


# ---- senders ----------------------------------------------------------------------------
def storescu(port: int, files: Sequence[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "storescu",
            "-aet",
            CALLING_AE,
            "-aec",
            CALLED_AE,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
    )


def send(port: int, files: Sequence[Path], associations: int) -> float:
    """Send files over `associations` concurrent storescu processes; wall seconds."""
    parts = split(files, associations)
    t0 = time.perf_counter()
    procs = [storescu(port, p) for p in parts]
    errors = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            errors.append(err.decode(errors="replace")[-500:])
    dt = time.perf_counter() - t0
    if errors:
        raise RuntimeError("storescu failed: " + " | ".join(errors))
    return dt


@contextmanager
def running(receiver: Receiver) -> Iterator[Receiver]:
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, its reaped children (storescp --fork) and its live
    descendants (hpacs-edge's acceptor processes), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(c) for c in _children(pid))


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in task.read_text().split()]
        except FileNotFoundError:
            pass
    return out


def listeners(port: int) -> int:
    """Listening sockets on a TCP port (one per SO_REUSEPORT acceptor), from /proc/net/tcp."""
    n = 0
    for table_ in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table_).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def rss_peak_kb(pid: int) -> int:
    """VmHWM: the peak resident set size of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired(a: Sequence[float], b: Sequence[float]) -> str:
    """Median and range of the per-repetition ratios a[i] / b[i] (same repetition, same load):
    on a shared machine single figures swing, ratios of one repetition much less."""
    ratios = sorted(x / y for x, y in zip(a, b, strict=True) if y)
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    fmt: Callable[[Sequence[str]], str] = lambda cells: (  # noqa: E731
        "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    )
    lines = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)
