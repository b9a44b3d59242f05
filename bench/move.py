"""C-MOVE benchmark: a cached 500-instance study (0.5 MB CT slices) moved to a DCMTK storescp,
hpacs-edge vs Orthanc 1.10 in the same run.

Both servers run as their own processes, hold the same study (loaded with storescu) and move
it to the same storescp (`+B`, files on the same disk) when DCMTK `movescu` asks; repetitions
alternate between the two. Prints seconds (median), instances/s, MB/s and the ratio to
Orthanc. Figures on a shared machine are noisy: read the ratio, which comes from one run.

    .venv/bin/python bench/move.py                  # 500 x 0.5 MB, 3 repetitions
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
    median,
    running,
    send,
    table,
)

from shared.synthetic import StudySpec, iter_study

DEST_AE = "STORESCP"
MOVE_AE = "MOVESCU"


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
    def __init__(self, workdir: Path, dest_port: int) -> None:
        super().__init__(workdir)
        self.dest_port = dest_port

    def prepare(self) -> None:
        super().prepare()
        with open(self.workdir / "hpacs.toml", "a") as fh:
            fh.write(
                f'[[nodes]]\nae_title = "{MOVE_AE}"\nhost = "127.0.0.1"\nport = 104\n'
                'permissions = ["echo", "move"]\n'
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
            "storescp": [DEST_AE, "127.0.0.1", self.dest_port],
        }
        cfg["DicomAlwaysAllowMove"] = True
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=500, help="instances in the study (default 500)")
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions (default 3)")
    ap.add_argument("--workdir", default="", help="where data goes (default: a temp dir on disk)")
    args = ap.parse_args(argv)
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hpacs-move-"))
    t0 = time.perf_counter()
    study_uid, files = make_study(base / "study", args.count)
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"{len(files)} instances, {mb:.0f} MB, in {time.perf_counter() - t0:.1f}s", flush=True)
    dest = Destination(base / "dest")
    with running(dest):
        edge = MoveEdge(base / "edge", dest.port)
        orthanc = MoveOrthanc(base / "orthanc", dest.port)
        with running(edge), running(orthanc):
            send(edge.port, files, 4)
            send(orthanc.port, files, 4)
            assert edge.stored() == len(files), edge.stored()
            assert orthanc.stored() == len(files), orthanc.stored()
            times: dict[str, list[float]] = {"hpacs-edge": [], "Orthanc 1.10": []}
            for rep in range(args.reps):
                for name, srv in (("hpacs-edge", edge), ("Orthanc 1.10", orthanc)):
                    dest.clear()
                    dt = movescu(srv.port, "BENCH", study_uid)
                    got = dest.stored()
                    if got != len(files):
                        raise RuntimeError(f"{name}: storescp received {got}/{len(files)}")
                    times[name].append(dt)
                    print(f"rep {rep + 1} {name}: {dt:.2f}s", flush=True)
    ref = median(times["Orthanc 1.10"])
    rows = []
    for name, ts in times.items():
        m = median(ts)
        rows.append([name, f"{m:.2f}", f"{len(files) / m:.0f}", f"{mb / m:.0f}", f"{ref / m:.2f}x"])
    print()
    print(f"C-MOVE of one {len(files)}-instance study ({mb:.0f} MB) to DCMTK storescp, movescu")
    print(table(["server", "seconds (median)", "inst/s", "MB/s", "speed vs Orthanc"], rows))
    if not args.workdir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
