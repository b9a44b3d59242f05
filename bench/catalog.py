"""The cloud catalog at scale: SQLite and PostgreSQL loaded from the same synthetic journals.

For each size (`--instances 1000000,10000000`): journals with a PACS's distributions (~100
instances per study in 1-6 series by modality, surnames sharing prefixes, dates over ten years,
20 sites; `shared.synthetic.catalog_rows`) are written once to a file:// bucket under `--cache`,
then for each backend:
1. apply throughput: the catalog built from the journals (`Poller.poll`), instances/s;
2. QIDO latency over the network API (`hpacs-cloud serve`, one replica, keep-alive client,
   limit=100): PatientID, PatientName=SMI*, a StudyDate quarter, ModalitiesInStudy=MR,
   instances of a series; p50/p99 ms;
3. closed-loop load: `--clients` concurrent clients cycling through those queries for
   `--load-s` seconds against 1 replica, and (PostgreSQL) `--replicas` replicas on the same
   database: requests/s, p50/p99, errors, and server CPU ms per request (from /proc: this
   machine has 2 cores, so requests/s cannot grow with replicas here; the CPU figure projects
   it).
`--cfind` then runs `bench/cfind.py --instances <largest>` (the edge's C-FIND on its SQLite
index). PostgreSQL runs in a temporary cluster under `--cache` with durable settings (fsync on).

    .venv/bin/python bench/catalog.py                                   # 1M, both backends
    .venv/bin/python bench/catalog.py --instances 10000000 --cfind      # the unattended 10M run
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import cpu_seconds, free_port, table, wait_port

from cloud_api.auth import TokenStore
from cloud_api.catalog import open_catalog
from cloud_api.catalog.poller import Poller
from deploy.pgcluster import Cluster
from shared.store.base import open_store
from shared.synthetic import catalog_rows, write_journals

ROOT = Path(__file__).resolve().parent.parent
QUERIES = ("PatientID", "PatientName=SMI*", "StudyDate quarter", "ModalitiesInStudy=MR",
           "instances of a series")  # fmt: skip


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", default="1000000", help="comma-separated sizes")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--queries", type=int, default=200, help="requests per query for latency")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--load-s", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=1000, help="rows per journal object")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/hpacs-bench-catalog"))
    ap.add_argument("--cfind", action="store_true", help="then run bench/cfind.py at the size")
    ap.add_argument("--keep", action="store_true", help="keep the catalogs for another run")
    return ap.parse_args()


# ---- journals -------------------------------------------------------------------------------


def journals(cache: Path, n: int, batch: int) -> tuple[str, dict[str, list[str]]]:
    """The bucket with n instances' journals (made once) and a sample of existing values."""
    bucket = cache / f"bucket-{n}-{batch}"
    sample_file = bucket.with_suffix(".sample.json")
    if sample_file.exists():
        return f"file://{bucket}", json.loads(sample_file.read_text())
    shutil.rmtree(bucket, ignore_errors=True)
    store = open_store(f"file://{bucket}")
    sample: dict[str, list[str]] = {"patient_id": [], "series": [], "study_date": []}
    step = max(1, n // 500)

    def rows() -> Iterator[tuple[str, dict[str, object]]]:
        for i, (site, row) in enumerate(catalog_rows(n, sites=20, seed=11)):
            if i % step == 0:
                sample["patient_id"].append(str(row["patient_id"]))
                sample["series"].append(f"{row['study_uid']}/{row['series_uid']}")
                sample["study_date"].append(str(row["study_date"]))
            yield site, row

    t0 = time.perf_counter()
    objects = write_journals(lambda k, d: store.put(k, d), rows(), batch=batch)
    print(
        f"journals: {n:,} instances in {sum(objects.values()):,} objects over {len(objects)} "
        f"sites, {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    sample_file.write_text(json.dumps(sample))
    return f"file://{bucket}", sample


# ---- servers --------------------------------------------------------------------------------


@contextmanager
def replicas(work: Path, store_url: str, catalog: str, count: int) -> Iterator[list[int]]:
    """`count` cloud API replicas (processes) on one catalog; yields their pids, ports in
    `work/ports.json` order."""
    cfg = work / "hpacs.toml"
    cfg.write_text(
        f'[cloud]\nstore_url = "{store_url}"\ndata_dir = "{work / "cloud"}"\n'
        f'tokens_file = "{work / "tokens.json"}"\ncatalog_poll_interval_s = 3600\n'
        f'query_max_results = 1000\nlog_level = "WARNING"\n'
    )
    procs, ports = [], []
    try:
        for _ in range(count):
            port = free_port()
            proc = subprocess.Popen(
                [str(ROOT / ".venv/bin/hpacs-cloud"), "--config", str(cfg), "serve",
                 "--port", str(port), "--catalog", catalog],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(proc)
            wait_port(port, proc, 600)
            ports.append(port)
        (work / "ports.json").write_text(json.dumps(ports))
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def paths(sample: dict[str, list[str]], rng: random.Random) -> dict[str, str]:
    """One request path per query kind, with values that exist."""
    year = rng.choice(sample["study_date"])[:4]
    q = rng.randrange(4)
    quarter = f"{year}{3 * q + 1:02d}01-{year}{3 * q + 3:02d}31"
    series = rng.choice(sample["series"])
    study, se = series.split("/")
    base = "/dicomweb/studies?limit=100&"
    return {
        "PatientID": base + urlencode({"PatientID": rng.choice(sample["patient_id"])}),
        "PatientName=SMI*": base + "PatientName=SMI*",
        "StudyDate quarter": base + urlencode({"StudyDate": quarter}),
        "ModalitiesInStudy=MR": base + "ModalitiesInStudy=MR",
        "instances of a series": f"/dicomweb/studies/{study}/series/{se}/instances?limit=100",
    }


def get(conn: http.client.HTTPConnection, path: str, token: str) -> int:
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def latency(
    port: int, token: str, sample: dict[str, list[str]], reps: int
) -> dict[str, list[float]]:
    rng = random.Random(5)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out: dict[str, list[float]] = {q: [] for q in QUERIES}
    for name in QUERIES:
        get(conn, paths(sample, rng)[name], token)  # warm this query's statements
        for _ in range(reps):
            path = paths(sample, rng)[name]
            t0 = time.perf_counter()
            status = get(conn, path, token)
            out[name].append((time.perf_counter() - t0) * 1000)
            assert status in (200, 204), (name, path, status)
    conn.close()
    return out


def load(ports: list[int], pids: list[int], token: str, sample: dict[str, list[str]],
         clients: int, seconds: float) -> dict[str, float]:  # fmt: skip
    """Closed loop: each client sends the next query as soon as the last one answered."""
    stop = time.monotonic() + seconds
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        rng = random.Random(i)
        conn = http.client.HTTPConnection("127.0.0.1", ports[i % len(ports)], timeout=60)
        mine: list[float] = []
        n = 0
        while time.monotonic() < stop:
            path = paths(sample, rng)[QUERIES[n % len(QUERIES)]]
            n += 1
            t0 = time.perf_counter()
            try:
                ok = get(conn, path, token) in (200, 204)
            except (OSError, http.client.HTTPException):
                ok = False
                conn = http.client.HTTPConnection("127.0.0.1", ports[i % len(ports)], timeout=60)
            mine.append((time.perf_counter() - t0) * 1000)
            if not ok:
                with lock:
                    errors[0] += 1
        with lock:
            lat.extend(mine)

    cpu0 = sum(cpu_seconds(p) for p in pids)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    return {
        "requests": len(lat),
        "rps": len(lat) / wall,
        "p50": pct(lat, 50),
        "p99": pct(lat, 99),
        "errors": errors[0],
        "cpu_ms": cpu * 1000 / max(1, len(lat)),
    }


# ---- the run --------------------------------------------------------------------------------


def run_size(args: argparse.Namespace, n: int, cluster: Cluster | None) -> tuple[list, list, list]:
    store_url, sample = journals(args.cache, n, args.batch)
    store = open_store(store_url)
    apply_rows, qido_rows, load_rows = [], [], []
    for backend in args.backends.split(","):
        work = args.cache / f"{backend}-{n}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "cloud").mkdir(parents=True)
        if backend == "postgresql":
            assert cluster is not None
            url = cluster.create_database(f"bench_{n}")
            _drop(url)
        else:
            url = f"sqlite://{work / 'cloud' / 'catalog.sqlite'}"
        catalog = open_catalog(url, work / "cloud")
        t0 = time.perf_counter()
        res = Poller(catalog, store).poll()
        seconds = time.perf_counter() - t0
        counts = catalog.counts()
        catalog.close()
        assert counts["instances"] == n, counts
        if backend == "postgresql":
            _analyze(url)
        apply_rows.append([backend, f"{n:,}", f"{res.objects:,}", f"{seconds:.0f}",
                           f"{n / seconds:,.0f}", f"{counts['studies']:,}"])  # fmt: skip
        print(table(APPLY, apply_rows[-1:]), flush=True)
        token = TokenStore(work / "tokens.json").create("bench", "admin", ["*"])
        with replicas(work, store_url, url, 1) as pids:
            port = json.loads((work / "ports.json").read_text())[0]
            lat = latency(port, token, sample, args.queries)
            for name in QUERIES:
                qido_rows.append([backend, f"{n:,}", name, f"{pct(lat[name], 50):.1f}",
                                  f"{pct(lat[name], 99):.1f}"])  # fmt: skip
            print(table(QIDO, qido_rows[-len(QUERIES) :]), flush=True)
            one = load([port], pids, token, sample, args.clients, args.load_s)
            load_rows.append(_load_row(backend, n, 1, one))
        if backend == "postgresql" and args.replicas > 1:
            with replicas(work, store_url, url, args.replicas) as pids:
                ports = json.loads((work / "ports.json").read_text())
                many = load(ports, pids, token, sample, args.clients, args.load_s)
                load_rows.append(_load_row(backend, n, args.replicas, many))
                ratio = many["p99"] / one["p99"]
                load_rows[-1].append(f"x{ratio:.2f} of 1 replica's p99")
        print(table(LOAD, [r[: len(LOAD)] for r in load_rows]), flush=True)
        if not args.keep and backend == "sqlite":
            shutil.rmtree(work, ignore_errors=True)
    return apply_rows, qido_rows, load_rows


def _load_row(backend: str, n: int, replicas_: int, r: dict[str, float]) -> list[str]:
    return [backend, f"{n:,}", str(replicas_), f"{r['rps']:.0f}", f"{r['p50']:.1f}",
            f"{r['p99']:.1f}", str(int(r["errors"])), f"{r['cpu_ms']:.2f}"]  # fmt: skip


def _drop(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS catalog_meta")


def _analyze(url: str) -> None:
    """What autovacuum does soon after a bulk load: planner statistics, visibility map."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


APPLY = ["backend", "instances", "objects", "apply s", "instances/s", "studies"]
QIDO = ["backend", "instances", "query (limit=100)", "p50 ms", "p99 ms"]
LOAD = ["backend", "instances", "replicas", "requests/s", "p50 ms", "p99 ms", "errors",
        "server CPU ms/request"]  # fmt: skip


def main() -> int:
    args = parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    cluster = None
    if "postgresql" in args.backends:
        root = args.cache / "pg"
        os.makedirs(root, exist_ok=True)
        os.chmod(args.cache, 0o755)
        cluster = Cluster(root, fast=False, settings=("shared_buffers=512MB", "work_mem=16MB",
                                                       "max_wal_size=4GB"))  # fmt: skip
        cluster.start()
    applies, qidos, loads = [], [], []
    try:
        for n in [int(x) for x in args.instances.split(",") if x]:
            a, q, lo = run_size(args, n, cluster)
            applies += a
            qidos += q
            loads += lo
    finally:
        if cluster is not None:
            cluster.stop() if args.keep else cluster.remove()
    print("\n" + table(APPLY, applies))
    print("\n" + table(QIDO, qidos))
    print(
        "\n"
        + table([*LOAD, "p99 vs 1 replica"], [r + [""] * (len(LOAD) + 1 - len(r)) for r in loads])
    )
    verdict(applies, qidos, loads)
    if args.cfind:
        largest = max(int(x) for x in args.instances.split(","))
        subprocess.run([sys.executable, str(ROOT / "bench" / "cfind.py"), "--instances",
                        str(largest), "--orthanc", "0"], check=False)  # fmt: skip
    return 0


def verdict(applies: list, qidos: list, loads: list) -> None:
    for r in qidos:
        if r[0] == "postgresql":
            ok = float(r[3]) < 10 and float(r[4]) < 50
            print(f"target QIDO {r[2]} at {r[1]}: p50 {r[3]} ms, p99 {r[4]} ms "
                  f"{'OK' if ok else 'MISSED'}")  # fmt: skip
    for r in applies:
        rate = float(r[4].replace(",", ""))
        print(f"target apply {r[0]} at {r[1]}: {r[4]}/s {'OK' if rate >= 20000 else 'MISSED'}")
    for r in loads:
        if len(r) > len(LOAD):
            ok = r[6] == "0" and float(r[-1].split()[0][1:]) <= 1.5
            print(f"target {r[2]} replicas at {r[1]}: errors {r[6]}, {r[-1]} "
                  f"{'OK' if ok else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
