"""Ingest benchmark: DCMTK storescu -> hpacs-edge, Orthanc (and optionally DCMTK storescp),
in one run.

Prints a table of instances/s (medians of interleaved repetitions), the *paired* ratio
hpacs-edge / Orthanc (median and range of the per-repetition ratios: both measured in the same
repetition, under the same machine load), each receiver's CPU ms per instance, then the edge's
peak RSS while receiving one ~1 GB object. The edge runs with its default acceptors and, as
`make up` runs a site, with the sync agent uploading to the GCS emulator beside it (--no-sync
to leave it out). Figures on a shared machine are noisy: read the paired ratios.

    .venv/bin/python bench/ingest.py                 # defaults: 5 repetitions, several minutes
    .venv/bin/python bench/ingest.py --ct 200 --small 600 --reps 1 --big-mb 0   # quick look
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Edge,
    Orthanc,
    Receiver,
    StoreSCP,
    cpu_seconds,
    make_dataset,
    median,
    paired,
    rss_peak_kb,
    running,
    send,
    table,
    write_big_object,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ct", type=int, default=600, help="0.5 MB CT slices (default 600)")
    p.add_argument("--small", type=int, default=2000, help="~10 KB images (default 2000)")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    p.add_argument("--assocs", default="1,4", help="association counts (default 1,4)")
    p.add_argument("--acceptors", default="auto", help='edge.acceptors (default "auto")')
    p.add_argument("--no-sync", action="store_true", help="no sync agent beside the edge")
    p.add_argument("--big-mb", type=int, default=1024, help="size of the RSS object, 0 skips")
    p.add_argument(
        "--targets",
        default="edge,orthanc",
        help="receivers to run (edge-normal: edge.index_synchronous = normal; a suffix -aN "
        "sets edge.acceptors = N for that target, e.g. edge-a1,edge-a2)",
    )
    p.add_argument("--workdir", default="", help="where data goes (default: a temp dir on disk)")
    return p.parse_args(argv)


RATIOS = [
    ("edge", "orthanc"),
    ("edge-normal", "orthanc"),
    ("edge", "storescp"),
    *((f"edge-a{n}", "orthanc") for n in range(1, 9)),
    *((f"edge-normal-a{n}", "orthanc") for n in range(1, 9)),
]


def receiver(name: str, work: Path, args: argparse.Namespace) -> Receiver:
    m = re.fullmatch(r"(edge(?:-normal)?)(?:-a(\d+))?", name)
    if m:  # edge-normal: edge.index_synchronous = "normal", Orthanc's own setting
        default = int(args.acceptors) if str(args.acceptors).isdigit() else args.acceptors
        n: int | str = int(m.group(2)) if m.group(2) else default
        index = "normal" if m.group(1) == "edge-normal" else "full"
        return Edge(work / "edge", acceptors=n, index_synchronous=index, sync=not args.no_sync)
    if name == "orthanc":
        return Orthanc(work / "orthanc")
    return StoreSCP(work / "storescp")


def run_rows(args: argparse.Namespace, work: Path) -> None:
    datasets = []
    t0 = time.perf_counter()
    if args.ct:
        datasets.append(make_dataset("0.5 MB CT", work / "in" / "ct", args.ct, 512, 512))
    if args.small:
        datasets.append(make_dataset("~10 KB", work / "in" / "small", args.small, 64, 64))
    print(f"datasets ready in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    targets = args.targets.split(",")
    assoc_counts = [int(a) for a in args.assocs.split(",")]
    rows = []
    for ds in datasets:
        for assocs in assoc_counts:
            rates: dict[str, list[float]] = {t: [] for t in targets}
            cpu: dict[str, list[float]] = {t: [] for t in targets}
            for rep in range(args.reps):
                for t in targets:  # interleaved: every receiver once per repetition
                    with running(receiver(t, work / "srv", args)) as r:
                        assert r.proc is not None
                        cpu0 = cpu_seconds(r.proc.pid)
                        dt = send(r.port, ds.files, assocs)
                        cpu[t].append((cpu_seconds(r.proc.pid) - cpu0) / len(ds.files) * 1000)
                        n = r.stored()
                    if n != len(ds.files):
                        raise RuntimeError(f"{t} stored {n} of {len(ds.files)}")
                    rates[t].append(len(ds.files) / dt)
                    print(
                        f"  {ds.name} x{len(ds.files)} assocs={assocs} rep={rep + 1} "
                        f"{t}: {len(ds.files) / dt:.0f}/s",
                        file=sys.stderr,
                    )
            med = {t: median(v) for t, v in rates.items()}
            row = [f"{ds.name} x{len(ds.files)}", str(assocs)]
            row += [f"{med[t]:,.0f}" for t in targets]
            for a, b in RATIOS:
                if a in med and b in med:
                    row.append(paired(rates[a], rates[b]))
            row += [f"{median(cpu[t]):.2f}" for t in targets]
            rows.append(row)
    header = ["dataset", "assocs", *(f"{t} inst/s" for t in targets)]
    header += [f"{a}/{b} paired" for a, b in RATIOS if a in targets and b in targets]
    header += [f"{t} cpu ms/inst" for t in targets]
    if not rows:
        return
    sync = "no sync agent" if args.no_sync else "sync agent + GCS emulator beside the edge"
    print(
        f"\nmedians of {args.reps} interleaved repetitions, storescu, TCP_NODELAY=1, {sync}; "
        "a/b paired: median (range) of the per-repetition ratios; cpu ms/inst: receiver "
        "process CPU per instance (acceptor children included)"
    )
    print(table(header, rows))


def run_rss(args: argparse.Namespace, work: Path) -> None:
    (work / "in").mkdir(parents=True, exist_ok=True)
    big = write_big_object(work / "in" / "big.dcm", args.big_mb * 1024 * 1024)
    size = big.stat().st_size
    with running(Edge(work / "srv" / "edge-big", acceptors=1, sync=not args.no_sync)) as r:
        assert r.proc is not None
        before = rss_peak_kb(r.proc.pid)
        dt = send(r.port, [big], 1)
        peak = rss_peak_kb(r.proc.pid)
        n = r.stored()
    big.unlink()
    print(
        f"\nedge peak RSS receiving one {size / 2**20:,.0f} MiB object: {peak / 1024:,.0f} MiB "
        f"(idle {before / 1024:,.0f} MiB; target < 300 MiB), {size / 2**20 / dt:,.0f} MiB/s, "
        f"stored={n}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hpacs-bench-"))
    try:
        run_rows(args, base)
        if args.big_mb:
            run_rss(args, base)
    finally:
        if not args.workdir:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
