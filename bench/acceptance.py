"""Cost of the acceptance rule (shared/acceptance.py) per instance, in-process.

Times `acceptance.check(path)` on a ~10 KB and a ~0.5 MB CT instance (files in the page
cache, as on the ingest path right after the spool), a 100-frame RLE object (fragments) and a
deflated instance; `read_header` (pydicom, up to the pixel data) is timed beside it for scale.

    .venv/bin/python bench/acceptance.py            # a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from shared import acceptance
from shared.dicom import read_header
from shared.synthetic import StudySpec, iter_study


def _instance(folder: Path, name: str, rows: int, columns: int) -> Path:
    ds = next(iter_study(StudySpec(instances_per_series=1, rows=rows, columns=columns)))
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _fragments(folder: Path, frames: int) -> Path:
    ds = next(iter_study(StudySpec(instances_per_series=1, rows=64, columns=64)))
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([b"\x00" * 1024] * frames)
    ds.file_meta.TransferSyntaxUID = RLELossless
    path = folder / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _deflated(folder: Path) -> Path:
    ds = next(iter_study(StudySpec(instances_per_series=1)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = folder / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def per_call_us(fn: Callable[[], object], loops: int, reps: int) -> float:
    """Median over `reps` of the mean time of `loops` calls, in microseconds."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - t0) / loops * 1e6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--loops", type=int, default=300)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases = {
            "10 KB CT (64x64)": _instance(folder, "small.dcm", 64, 64),
            "0.5 MB CT (512x512)": _instance(folder, "ct.dcm", 512, 512),
            "RLE, 100 fragments": _fragments(folder, 100),
            "deflated 10 KB": _deflated(folder),
        }
        print(f"{'object':<22} {'bytes':>9} {'check us':>9} {'read_header us':>15}")
        for label, path in cases.items():
            check = per_call_us(lambda p=path: acceptance.check(p), args.loops, args.reps)
            header = per_call_us(lambda p=path: read_header(p), args.loops, args.reps)
            size = path.stat().st_size
            print(f"{label:<22} {size:>9} {check:>9.1f} {header:>15.1f}")


if __name__ == "__main__":
    main()
