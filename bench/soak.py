"""Soak: a whole site under faults, then a check that no acknowledged instance was lost.

Four modalities (pynetdicom, one association each) send synthetic studies to `hpacs-edge
serve` for --minutes while the sync agent uploads to a GCS emulator and evicts under small
watermarks, and the cloud API serves QIDO-RS. Meanwhile, at random times (seeded): kill -9 of
the edge and of the sync agent (restarted after a pause), GCS outages (a proxy between the
services and the emulator resets or black-holes connections), one byte flipped in a cache
file at rest, and C-MOVEs of random studies. Then every acknowledged instance must be in the
index, intact in the cache or the bucket, found by C-FIND and QIDO-RS, retrievable
bit-identical by C-MOVE (evicted ones recalled), and `hpacs-cloud audit verify` (and
`--bucket`) must pass. Prints a summary; exits 1 if anything was lost or a check failed.

    .venv/bin/python bench/soak.py                       # 30 minutes
    .venv/bin/python bench/soak.py --minutes 5 --outage-s 45 --outages 2 --seed 7
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soak_check import CheckReport, FinalCheck, index_rows, wait_drained
from soak_faults import FaultOptions, Faults
from soak_load import Ledger, RateLimit, Sender
from soak_qr import QR, Destination, Reader
from soak_site import BUCKET, DEST_AE, EDGE_AE, QR_AE, SENDER_AES, Site, SiteOptions

from tests.support.gcs import gcs_store, running_emulator

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    a = ap.add_argument
    a("--minutes", type=float, default=30.0, help="length of the fault phase (default 30)")
    a("--seed", type=int, default=1, help="seeds study shapes and every fault time")
    a("--rate", type=float, default=20.0, help="instances/s over the 4 senders (0: no limit)")
    a("--max-instances", type=int, default=30, help="largest study sent")
    a("--edge-kills-per-min", type=float, default=0.2)
    a("--sync-kills-per-min", type=float, default=0.2)
    a("--corruptions-per-min", type=float, default=2.0)
    a("--unsynced-share", type=float, default=0.1, help="corruptions aimed at unsynced files")
    a("--outages", type=int, default=1, help="GCS outages, spread over the run")
    a("--outage-s", type=float, default=120.0, help="length of each outage")
    a("--outage-mode", choices=["refuse", "hang", "alternate"], default="alternate")
    a("--reads-per-min", type=float, default=2.0, help="C-FIND/C-MOVE/QIDO of a study mid-run")
    a("--cache-high", default="40MB", help="sync.cache_high_watermark (eviction pressure)")
    a("--cache-low", default="25MB", help="sync.cache_low_watermark")
    a("--min-cache-age-s", type=float, default=5.0)
    a("--scrub-bytes-per-s", type=int, default=8 * 1024 * 1024)
    a("--drain-timeout-s", type=float, default=900.0)
    a("--qido-timeout-s", type=float, default=120.0)
    a("--dir", default="", help="work directory (default var/soak-<time>)")
    a("--keep", action="store_true", help="keep the work directory even when all is well")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.dir) if args.dir else ROOT / "var" / time.strftime("soak-%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.minutes:g} min, seed {args.seed}, work dir {work}", flush=True)
    signal.signal(signal.SIGTERM, _terminate)
    stop = threading.Event()
    with running_emulator(bucket=BUCKET) as emu:
        site = Site(work, emu.port, site_options(args))
        dest = Destination(DEST_AE, site.dest_port, work / "moved", work / "logs" / "storescp.log")
        try:
            ok = soak(args, work, site, dest, emu.url, stop)
        finally:
            stop.set()  # senders and readers stop talking to the edge
            dest.stop()
            site.stop()
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _terminate(_sig: int, _frame: object) -> None:
    """SIGTERM (`timeout`, a service manager): stop every child on the way out. `timeout`
    signals its process group too, so a second SIGTERM must not cut the clean-up short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(143)


def site_options(args: argparse.Namespace) -> SiteOptions:
    return SiteOptions(
        cache_high=args.cache_high,
        cache_low=args.cache_low,
        min_cache_age_s=args.min_cache_age_s,
        scrub_bytes_per_s=args.scrub_bytes_per_s,
    )


def fault_options(args: argparse.Namespace) -> FaultOptions:
    return FaultOptions(
        edge_kills_per_min=args.edge_kills_per_min,
        sync_kills_per_min=args.sync_kills_per_min,
        corruptions_per_min=args.corruptions_per_min,
        unsynced_share=args.unsynced_share,
        outages=args.outages,
        outage_s=args.outage_s,
        outage_mode=args.outage_mode,
    )


def soak(
    args: argparse.Namespace,
    work: Path,
    site: Site,
    dest: Destination,
    emulator_url: str,
    stop: threading.Event,
) -> bool:
    timings: dict[str, float] = {}
    t = time.monotonic()
    site.start()
    timings["start-up of the site"] = time.monotonic() - t
    edge = ("127.0.0.1", site.edge_port, EDGE_AE)
    ledger = Ledger(work / "acked.jsonl")
    limit = RateLimit(args.rate)
    spool = work / "spool"
    senders = [
        Sender(ae, edge, ledger, spool, args.seed * 10 + i, limit, stop, args.max_instances)
        for i, ae in enumerate(SENDER_AES)
    ]
    duration = args.minutes * 60.0
    faults = Faults(site, fault_options(args), args.seed, duration, stop)
    reader = Reader(
        QR(QR_AE, edge, DEST_AE),
        dest,
        ledger,
        (site.cloud_url, site.token),
        args.reads_per_min,
        args.seed + 7,
        stop,
        faults.recent_corrupted_studies,
    )
    t = time.monotonic()
    for th in [*senders, faults, reader]:
        th.start()
    try:
        while not stop.wait(30.0) and time.monotonic() - t < duration:
            progress(site, ledger, faults, time.monotonic() - t)
            if time.monotonic() - t + 30.0 > duration:
                stop.wait(max(0.0, duration - (time.monotonic() - t)))
                break
    except KeyboardInterrupt:
        print("interrupted: checking what was acknowledged so far", flush=True)
    stop.set()
    for th in [*senders, reader]:
        th.join(300)
    faults.join()  # its finish(): outages over, killed services back
    timings["fault phase (ingest)"] = time.monotonic() - t
    (work / "reads.log").write_text("".join(line + "\n" for line in reader.moves))
    ledger.close()
    acked, studies = ledger.snapshot()
    print(f"fault phase over: {len(acked)} acknowledged; waiting for the agent", flush=True)

    t = time.monotonic()
    pending = wait_drained(site.index_path, acked, args.drain_timeout_s)
    timings["drain after the fault phase"] = time.monotonic() - t
    bucket = gcs_store(emulator_url, BUCKET)
    qr = QR(QR_AE, edge, DEST_AE)
    check = FinalCheck(
        site.index_path,
        site.cache_dir,
        bucket,
        qr,
        dest,
        (site.cloud_url, site.token),
        acked,
        studies,
        list(faults.log.corruptions),
    )
    report = check.run(args.qido_timeout_s)
    qr.close()
    status = site.cli("hpacs-sync", "status").stdout.strip().splitlines()
    cloud_code = site.cloud.stop()  # ships the rest of the audit trail
    audit = [audit_verify(site, *extra) for extra in ((), ("--bucket",))]
    codes = {"cloud": cloud_code, "edge": site.edge.stop(), "sync": site.sync.stop()}
    lines, ok = summary(args, ledger, faults, reader, report, pending, audit, codes, timings)
    lines += ["hpacs-sync status at the end:", *(f"  {line}" for line in status)]
    lines += log_findings(site)
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    (work / "summary.txt").write_text(text + "\n")
    return ok


def progress(site: Site, ledger: Ledger, faults: Faults, elapsed: float) -> None:
    acked, _ = ledger.snapshot()
    try:
        states: dict[str, int] = {}
        for r in index_rows(site.index_path).values():
            states[r["state"]] = states.get(r["state"], 0) + 1
    except Exception as exc:  # the index is busy: report next time
        states = {"index": 0, type(exc).__name__: 1}
    st = " ".join(f"{k}={v}" for k, v in sorted(states.items()))
    print(
        f"  [{elapsed:7.1f}s] acknowledged {len(acked)} ({len(acked) / elapsed:.1f}/s); "
        f"index {st}; faults {sum(faults.log.counts.values())}",
        flush=True,
    )


def audit_verify(site: Site, *extra: str) -> tuple[bool, str]:
    r = site.cli("hpacs-cloud", "audit", "verify", *extra)
    first = (r.stdout.strip().splitlines() or [r.stderr.strip()])[0]
    return r.returncode == 0, f"exit {r.returncode}: {first}"


def summary(
    args: argparse.Namespace,
    ledger: Ledger,
    faults: Faults,
    reader: Reader,
    report: CheckReport,
    pending: dict[str, int],
    audit: list[tuple[bool, str]],
    codes: dict[str, int | None],
    timings: dict[str, float],
) -> tuple[list[str], bool]:
    acked, studies = ledger.snapshot()
    log = faults.log
    size = sum(a.size for a in acked.values())
    phase = timings["fault phase (ingest)"]
    out = [f"## soak summary (seed {args.seed}, {args.minutes:g} min, rate {args.rate:g}/s)", ""]
    out.append(
        f"acknowledged: {len(acked)} instances in {len(studies)} studies, "
        f"{size / 1e6:.1f} MB, {len(acked) / phase:.1f} inst/s over {phase:.0f} s"
    )
    out.append("sender outcomes: " + _counts(ledger.outcomes))
    out.append("faults injected: " + _counts(log.counts))
    out.append(f"GCS outage total: {log.outage_s:.0f} s")
    for svc in faults.site.services:
        if svc.restart_s:
            r = sorted(svc.restart_s)
            out.append(
                f"{svc.name} restarts: {len(r)}, back in median {r[len(r) // 2]:.1f} s, "
                f"max {r[-1]:.1f} s (pause included)"
            )
    early = [c for c in log.corruptions if c.before_sync]
    out.append(
        f"corruptions: {len(log.corruptions) - len(early)} of synced files, {len(early)} before "
        f"sync ({len(report.destroyed)} of those destroyed the instance: the damage hit the only "
        "copy; excluded from lost)"
    )
    if report.destroyed:
        out.append("destroyed by an injected fault: " + ", ".join(report.destroyed[:10]))
    out.append("mid-run reads: " + _counts(reader.stats))
    out.append(f"drain pending at the deadline: {pending or 'none'}")
    out.append("states before the final C-MOVEs: " + _counts(report.states_before))
    out.append("states after: " + _counts(report.states_after))
    out.append("at rest: " + _counts(report.at_rest))
    out.append("final C-MOVE: " + _counts(report.moves))
    out += [f"note: {n}" for n in report.notes[:20]]
    out.append(f"audit verify: {audit[0][1]}")
    out.append(f"audit verify --bucket: {audit[1][1]}")
    out.append(f"exit statuses at stop: {codes}")
    out += [f"service problem: {p}" for p in log.problems]
    out.append("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    out.append("check timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items()))
    for kind, sops in sorted(report.problems.items()):
        out.append(f"PROBLEM {kind}: {len(sops)} e.g. {', '.join(sops[:5])}")
    out += [f"PROBLEM mid-run: {p}" for p in reader.problems[:20]]
    lost = report.lost()
    out.append(f"checked: {report.checked} acknowledged, lost: {len(lost)}")
    ok = (
        not lost
        and not report.problems
        and not pending
        and all(a[0] for a in audit)
        and not reader.problems
        and not log.problems
    )
    out.append("RESULT: " + ("OK" if ok else "FAILED"))
    return out, ok


def _counts(c: Mapping[str, int]) -> str:
    items = sorted(c.items())
    return ", ".join(f"{k} {v}" for k, v in items) or "none"


def log_findings(site: Site) -> list[str]:
    """ERROR lines and tracebacks per service log: not failures by themselves, leads."""
    out = []
    for svc in site.services:
        text = svc.log.read_text(errors="replace") if svc.log.exists() else ""
        errors = len(re.findall(r"\bERROR\b", text))
        tracebacks = text.count("Traceback (most recent call last)")
        out.append(f"log {svc.name}: {errors} ERROR lines, {tracebacks} tracebacks ({svc.log})")
    return out


if __name__ == "__main__":
    sys.exit(main())
