"""C-MOVE and C-GET benchmark: a cached 500-instance study (0.5 MB CT slices), hpacs-edge vs
Orthanc 1.10 in the same run.

Both servers run as their own processes and hold the same study (loaded with storescu). C-MOVE:
DCMTK `movescu` asks each to move it to the same DCMTK storescp (`+B`, files on the same disk).
C-GET: DCMTK `getscu` retrieves it on its own association. Repetitions alternate between the
servers; the table gives seconds (median), instances/s, the paired speed ratio (median and range
of the per-repetition Orthanc-time / edge-time) and each server's CPU ms per instance. The edge
runs with its default acceptors and the sync agent beside it (as `make up` runs a site;
--no-sync leaves it out).

    .venv/bin/python bench/move.py                  # 500 x 0.5 MB, 5 repetitions
    .venv/bin/python bench/move.py --count 200 --reps 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CALLING_AE,
    ENV,
    Edge,
    Orthanc,
    Receiver,
    cpu_seconds,
    median,
    paired,
    running,
    send,
    table,
)

from shared.synthetic import StudySpec, iter_study

DEST_AE = "STORESCP"
MOVE_AE = "MOVESCU"
GET_AE = "GETSCU"
OPS = ("C-MOVE", "C-GET")


class Destination(Receiver):
    name = "storescp"

    def command(self) -> list[str]:
        return ["storescp", "-aet", DEST_AE, "-od", str(self.out), "+B", str(self.port)]

    @property
    def out(self) -> Path:
        return self.workdir / "out"

    def prepare(self) -> None:
        self.out.mkdir(exist_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.out)
        self.out.mkdir()

    def stored(self) -> int:
        return sum(1 for _ in self.out.iterdir())


class MoveEdge(Edge):
    def __init__(self, workdir: Path, dest_port: int, sync: bool) -> None:
        super().__init__(workdir, sync=sync)
        self.dest_port = dest_port

    def prepare(self) -> None:
        super().prepare()
        with open(self.workdir / "hpacs.toml", "a") as fh:
            fh.write(
                f'[[nodes]]\nae_title = "{MOVE_AE}"\nhost = "127.0.0.1"\nport = 104\n'
                'permissions = ["echo", "move"]\n'
                f'[[nodes]]\nae_title = "{GET_AE}"\nhost = "127.0.0.1"\nport = 104\n'
                'permissions = ["echo", "get"]\n'
                f'[[nodes]]\nae_title = "{DEST_AE}"\nhost = "127.0.0.1"\n'
                f'port = {self.dest_port}\npermissions = ["echo", "store"]\n'
            )


class MoveOrthanc(Orthanc):
    def __init__(self, workdir: Path, dest_port: int) -> None:
        super().__init__(workdir)
        self.dest_port = dest_port

    def prepare(self) -> None:
        super().prepare()
        path = self.workdir / "orthanc.json"
        cfg = json.loads(path.read_text())
        cfg["DicomModalities"] = {
            "storescu": [CALLING_AE, "127.0.0.1", 104],
            "movescu": [MOVE_AE, "127.0.0.1", 104],
            "getscu": [GET_AE, "127.0.0.1", 104],
            "storescp": [DEST_AE, "127.0.0.1", self.dest_port],
        }
        cfg["DicomAlwaysAllowMove"] = True
        cfg["DicomAlwaysAllowGet"] = True
        path.write_text(json.dumps(cfg, indent=1))


def make_study(folder: Path, count: int) -> tuple[str, list[Path]]:
    """One study of `count` 512x512 16-bit slices (0.5 MB each), 100 per series."""
    folder.mkdir(parents=True, exist_ok=True)
    series = max(1, (count + 99) // 100)
    spec = StudySpec(series_count=series, instances_per_series=100, rows=512, columns=512)
    files: list[Path] = []
    study_uid = ""
    for ds in iter_study(spec):
        if len(files) == count:
            break
        study_uid = str(ds.StudyInstanceUID)
        p = folder / f"{len(files):06d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        files.append(p)
    return study_uid, files


def movescu(port: int, called_ae: str, study_uid: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            "movescu",
            "-S",
            "-aet",
            MOVE_AE,
            "-aec",
            called_ae,
            "-aem",
            DEST_AE,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=1800,
    )
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"movescu against {called_ae} failed: {r.stderr[-800:]}")
    return dt


def getscu(port: int, called_ae: str, study_uid: str, out: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            "getscu", "-S", "-aet", GET_AE, "-aec", called_ae, "-od", str(out),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "127.0.0.1", str(port),
        ],
        capture_output=True, text=True, env=ENV, timeout=1800,
    )  # fmt: skip
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"getscu against {called_ae} failed: {r.stderr[-800:]}")
    return dt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=500, help="instances in the study (default 500)")
    ap.add_argument("--reps", type=int, default=5, help="alternating repetitions (default 5)")
    ap.add_argument("--workdir", default="", help="where data goes (default: a temp dir on disk)")
    ap.add_argument("--no-sync", action="store_true", help="no sync agent beside the edge")
    args = ap.parse_args(argv)
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hpacs-move-"))
    t0 = time.perf_counter()
    study_uid, files = make_study(base / "study", args.count)
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"{len(files)} instances, {mb:.0f} MB, in {time.perf_counter() - t0:.1f}s", flush=True)
    dest = Destination(base / "dest")
    names = ("hpacs-edge", "Orthanc 1.10")
    times: dict[tuple[str, str], list[float]] = {(o, n): [] for o in OPS for n in names}
    cpu: dict[tuple[str, str], list[float]] = {(o, n): [] for o in OPS for n in names}
    got_dir = base / "got"
    with running(dest):
        edge = MoveEdge(base / "edge", dest.port, sync=not args.no_sync)
        orthanc = MoveOrthanc(base / "orthanc", dest.port)
        with running(edge), running(orthanc):
            send(edge.port, files, 4)
            send(orthanc.port, files, 4)
            assert edge.stored() == len(files), edge.stored()
            assert orthanc.stored() == len(files), orthanc.stored()
            for rep in range(args.reps):
                for name, srv in zip(names, (edge, orthanc), strict=True):
                    assert srv.proc is not None
                    dest.clear()
                    c0 = cpu_seconds(srv.proc.pid)
                    dt = movescu(srv.port, "BENCH", study_uid)
                    cpu["C-MOVE", name].append((cpu_seconds(srv.proc.pid) - c0) / len(files) * 1e3)
                    if dest.stored() != len(files):
                        raise RuntimeError(f"{name}: storescp received {dest.stored()}")
                    times["C-MOVE", name].append(dt)
                    shutil.rmtree(got_dir, ignore_errors=True)
                    got_dir.mkdir()
                    c0 = cpu_seconds(srv.proc.pid)
                    dg = getscu(srv.port, "BENCH", study_uid, got_dir)
                    cpu["C-GET", name].append((cpu_seconds(srv.proc.pid) - c0) / len(files) * 1e3)
                    if sum(1 for _ in got_dir.iterdir()) != len(files):
                        raise RuntimeError(f"{name}: getscu received too few")
                    times["C-GET", name].append(dg)
                    print(f"rep {rep + 1} {name}: move {dt:.2f}s get {dg:.2f}s", flush=True)
    rows = []
    for op in ("C-MOVE", "C-GET"):
        for name in names:
            m = median(times[op, name])
            ratio = paired(times[op, "Orthanc 1.10"], times[op, name])
            rows.append(
                [op, name, f"{m:.2f}", f"{len(files) / m:.0f}", f"{mb / m:.0f}", ratio,
                 f"{median(cpu[op, name]):.2f}"]
            )  # fmt: skip
    print()
    sync = "no sync agent" if args.no_sync else "sync agent + GCS emulator beside the edge"
    print(
        f"{len(files)}-instance study ({mb:.0f} MB): C-MOVE to DCMTK storescp (movescu), C-GET "
        f"(getscu); {args.reps} alternating repetitions, {sync}"
    )
    header = ["op", "server", "seconds (median)", "inst/s", "MB/s", "speed vs Orthanc, paired"]
    print(table([*header, "server cpu ms/inst"], rows))
    if not args.workdir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
