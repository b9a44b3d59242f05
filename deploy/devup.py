"""Run every process of the Procfile in the foreground with prefixed logs (`make up`).

Ctrl-C or SIGTERM stops them all (SIGTERM, then SIGKILL after a grace period); if one dies,
the others are stopped too, so a broken start is visible at once.

`CLOUD_CATALOG=postgresql make up` first starts a local PostgreSQL cluster under
`var/postgres` (kept between runs, stopped last), runs the cloud API on it and writes the
catalog URL to `var/cloud-catalog.url`, so `hpacs-cloud --config FILE serve --port N --catalog
$(cat var/cloud-catalog.url)` runs one more replica beside it.
"""

from __future__ import annotations

import argparse
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COLORS = ["36", "33", "35", "32", "34", "31"]


def read_procfile(path: Path, config: str) -> list[tuple[str, list[str]]]:
    procs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, cmd = line.partition(":")
        procs.append((name.strip(), shlex.split(cmd.strip().replace("{config}", config))))
    return procs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="deploy/hpacs.dev.toml")
    ap.add_argument("--procfile", default=str(ROOT / "deploy" / "Procfile"))
    args = ap.parse_args()
    os.chdir(ROOT)
    procs = read_procfile(Path(args.procfile), args.config)
    cluster = start_catalog(os.environ.get("CLOUD_CATALOG", ""), procs)
    try:
        return run(procs)
    finally:
        if cluster is not None:
            cluster.stop()
            print("postgres stopped", flush=True)


URL_FILE = ROOT / "var" / "cloud-catalog.url"


def start_catalog(kind: str, procs: list[tuple[str, list[str]]]) -> Any:
    """For CLOUD_CATALOG=postgresql: the local cluster, its URL written down and given to the
    cloud API's command line. Otherwise the cloud API keeps its SQLite file."""
    URL_FILE.unlink(missing_ok=True)
    if kind in ("", "sqlite"):
        return None
    if kind != "postgresql":
        raise SystemExit(f"CLOUD_CATALOG must be sqlite or postgresql, got {kind!r}")
    try:
        from pgcluster import Cluster  # deploy/pgcluster.py, beside this script
    except ImportError:  # imported as deploy.devup (tests)
        from deploy.pgcluster import Cluster

    # port 5433 beside a system PostgreSQL's 5432; HPACS_DEV_PGPORT=0 takes a free one
    port = int(os.environ.get("HPACS_DEV_PGPORT", "5433"))
    cluster = Cluster(URL_FILE.parent / "postgres", port=port, fast=False)  # durable: kept
    cluster.start()
    url = cluster.create_database("hpacs")
    URL_FILE.write_text(url + "\n")
    for name, cmd in procs:
        if name == "cloud":
            cmd += ["--catalog", url]
    print(f"postgres listening, catalog {url} (also in {URL_FILE})", flush=True)
    return cluster


def run(procs: list[tuple[str, list[str]]]) -> int:
    width = max(len(n) for n, _ in procs)
    sel = selectors.DefaultSelector()
    children: dict[str, subprocess.Popen[bytes]] = {}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for i, (name, cmd) in enumerate(procs):
        p = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        children[name] = p
        assert p.stdout is not None
        sel.register(p.stdout, selectors.EVENT_READ, (name, COLORS[i % len(COLORS)]))
        print(f"started {name} pid={p.pid}: {' '.join(cmd)}", flush=True)

    stopping = False

    def _stop(_sig: int, _frm: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    tty = sys.stdout.isatty()
    while not stopping and sel.get_map():
        for key, _ in sel.select(timeout=0.5):
            name, color = key.data
            line = key.fileobj.readline()  # type: ignore[union-attr]
            if not line:
                sel.unregister(key.fileobj)
                continue
            prefix = f"{name:<{width}} | "
            if tty:
                prefix = f"\033[{color}m{prefix}\033[0m"
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()
        dead = [n for n, p in children.items() if p.poll() is not None]
        if dead and not stopping:
            print(f"{', '.join(dead)} exited; stopping the others", flush=True)
            stopping = True
    for p in children.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for name, p in children.items():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in time; killing it", flush=True)
            p.kill()
    print("all stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
