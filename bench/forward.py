"""Routing benchmark: what the routing enqueue costs ingest, and how fast the forwarder drains.

In one run, against the same DCMTK storescp:
- baseline: DCMTK storescu -> storescp (one association per process, like the forwarder);
- hpacs ingest (in process, `Ingestor.ingest_path`) without rules and with a matching rule;
- hpacs forwarder draining the queue to storescp, concurrency 1 and 2 (one study per batch).

    .venv/bin/python bench/forward.py                 # 1000 ~32 KB images in studies of 100
    .venv/bin/python bench/forward.py --count 300     # quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import StoreSCP, make_dataset, running, send, table

from edge.cache import Cache
from edge.forwarder import Forwarder, attach_routing, dimse_sender
from edge.ingest import Ingestor
from edge.routequeue import queue_depth
from shared.config import Config, parse_config
from shared.index import Database
from shared.registry import apply_config_nodes
from shared.rows import Origin


def config(data_dir: Path, port: int, routes: bool, concurrency: int = 1) -> Config:
    rules = [
        {"name": "all-ct", "modality": "CT", "destinations": ["BENCH"], "concurrency": concurrency}
    ]
    return parse_config(
        {
            "edge": {"data_dir": str(data_dir), "min_free_bytes": 0, "port": 0},
            "nodes": [{"ae_title": "BENCH", "host": "127.0.0.1", "port": port}],
            "routes": rules if routes else [],
        }
    )


def ingest_all(cfg: Config, files: list[Path]) -> tuple[Database, Cache, float]:
    db = Database(cfg.edge.index_path)
    with db.write() as conn:
        apply_config_nodes(conn, cfg.nodes)
    cache = Cache(cfg.edge.cache_dir)
    ingestor = Ingestor(db, cache)
    attach_routing(ingestor, cfg.routes)
    t0 = time.perf_counter()
    for f in files:
        ingestor.ingest_path(f, Origin("import"))
    return db, cache, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3, help="ingest repetitions (default 3)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpacs-bench-forward-") as tmp:
        root = Path(tmp)
        ds = make_dataset("images", root / "in", args.count, 128, 128)
        n = len(ds.files)
        mb = ds.bytes / 1e6
        with running(StoreSCP(root / "scp-base")) as scp:
            dt = send(scp.port, ds.files, 1)
        rows.append(["storescu -> storescp (baseline)", f"{n / dt:.0f}", f"{mb / dt:.1f}"])
        times: dict[bool, list[float]] = {False: [], True: []}
        for rep in range(args.reps):  # interleaved: the machine's noise hits both alike
            for with_routes in (False, True):
                cfg = config(root / f"edge-{with_routes}-{rep}", 1, with_routes)
                db, _, dt = ingest_all(cfg, ds.files)
                db.close()
                times[with_routes].append(dt)
        for label, with_routes in (("ingest, no rules", False), ("ingest + enqueue", True)):
            dt = statistics.median(times[with_routes])
            rows.append(
                [f"hpacs {label} (median of {args.reps})", f"{n / dt:.0f}", f"{mb / dt:.1f}"]
            )
        for conc in (1, 2):
            with running(StoreSCP(root / f"scp-{conc}")) as scp:
                cfg = config(root / f"edge-fwd-{conc}", scp.port, True, conc)
                db, cache, _ = ingest_all(cfg, ds.files)
                fwd = Forwarder(db, cfg, dimse_sender("HPACS", db, cache), poll_interval_s=0.05)
                t0 = time.perf_counter()
                fwd.start()
                while queue_depth(db.reader())["sent"] < n:
                    time.sleep(0.05)
                dt = time.perf_counter() - t0
                fwd.stop()
                db.close()
            rows.append(
                [
                    f"hpacs forwarder -> storescp, concurrency {conc}",
                    f"{n / dt:.0f}",
                    f"{mb / dt:.1f}",
                ]
            )
    print(f"{n} instances, {mb:.1f} MB, studies of 100")
    print(table(["path", "instances/s", "MB/s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
