"""Cost of a /metrics scrape and of the console's /api/status as the index grows.

The edge computes cache, backlog and upload-error figures from the SQLite index at scrape
time. This measures that cost at several index sizes against a baseline from the same run:
one full table scan, `SELECT count(*), sum(size) FROM instances NOT INDEXED`, what an exact
figure costs without the covering index of migration 4.

    .venv/bin/python bench/metrics_scrape.py                  # 10k, 100k, 500k instances
    .venv/bin/python bench/metrics_scrape.py --sizes 10000    # quick look
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, table

from edge import dashboard
from shared.index import Database
from shared.metrics import edge_registry, render

STATES = [("synced", 60), ("evicted", 20), ("cached", 15), ("uploading", 3), ("failed", 1)]


def populate(db: Database, n: int, per_study: int = 200) -> None:
    rng = random.Random(n)
    weights = [w for _, w in STATES]
    names = [s for s, _ in STATES]
    now = time.time()
    with db.write() as conn:
        for s in range(n // per_study):
            conn.execute(
                "INSERT INTO studies(id, study_uid, created_at, updated_at, last_access) "
                "VALUES (?,?,?,?,?)",
                (s + 1, f"1.2.3.{s}", now, now, now),
            )
            conn.execute(
                "INSERT INTO series(id, series_uid, study_id, created_at) VALUES (?,?,?,?)",
                (s + 1, f"1.2.3.{s}.1", s + 1, now),
            )
        rows = []
        for i in range(n):
            study = i // per_study + 1
            state = rng.choices(names, weights)[0]
            err = "timeout" if state == "cached" and rng.random() < 0.05 else ""
            retry_at = now + 60 if err else 0.0
            rows.append(
                (
                    f"1.2.3.{study}.1.{i}",
                    study,
                    study,
                    "1.2.840.10008.5.1.4.1.1.2",
                    "1.2.840.10008.1.2.1",
                    f"ab/cd/{i}.dcm",
                    rng.randint(10_000, 600_000),
                    "00000000",
                    now - rng.random() * 86400,
                    state,
                    now,
                    err,
                    retry_at,
                    now,
                )
            )
        conn.executemany(
            "INSERT INTO instances(sop_instance_uid, series_id, study_id, sop_class_uid, "
            "transfer_syntax, path, size, crc32c, received_at, state, state_changed_at, "
            "last_error, next_attempt_at, last_access) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )


def timed(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm the page cache
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return median(out)


def measure(db: Database, cache: Path, reps: int) -> tuple[float, float, float, float]:
    """Medians (ms): baseline full scan, /metrics render, /api/status, /api/studies."""
    reg = edge_registry(db.path, cache, lambda: 0)
    conn = db.reader()
    base = timed(
        lambda: conn.execute("SELECT count(*), sum(size) FROM instances NOT INDEXED").fetchone(),
        reps,
    )
    scrape = timed(lambda: render(reg), reps)
    status = timed(lambda: dashboard.status(db, str(cache), "90%", "75%", 0), reps)
    studies = timed(lambda: dashboard.studies(db, 50), reps)
    return base, scrape, status, studies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,500000", help="index sizes (instances)")
    p.add_argument("--reps", type=int, default=5, help="repetitions, median reported")
    args = p.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="hpacs-metrics-") as tmp:
            db = Database(Path(tmp) / "index.sqlite")
            cache = Path(tmp) / "cache"
            cache.mkdir()
            t0 = time.perf_counter()
            populate(db, n)
            fill_s = time.perf_counter() - t0
            base, scrape, status, studies = measure(db, cache, args.reps)
            db.close()
        rows.append(
            [
                f"{n:,}",
                f"{fill_s:.1f}",
                f"{base:.1f}",
                f"{scrape:.1f}",
                f"{scrape / base:.1f}x",
                f"{status:.1f}",
                f"{studies:.1f}",
            ]
        )
    print(
        table(
            [
                "instances",
                "fill s",
                "table scan ms",
                "/metrics ms",
                "/metrics vs scan",
                "/api/status ms",
                "/api/studies ms",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
