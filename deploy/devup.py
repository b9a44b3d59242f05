"""Run every process of the Procfile in the foreground with prefixed logs (`make up`).

Start order: the object store's emulator (the Procfile entry named `gcs`, when there is one)
starts first, and the others once the configured bucket answers, so no service meets a
missing bucket at start (each would wait for it anyway: `shared/health.py` StoreReadiness).
Ctrl-C or SIGTERM stops them all (SIGTERM, then SIGKILL after a grace period) and prints what
they log while stopping; if one dies, the others are stopped too and the exit status is 1, so
a broken start is visible at once.

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
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COLORS = ["36", "33", "35", "32", "34", "31"]
STORE_PROCESS = "gcs"  # started first; the others wait until the configured bucket answers
STORE_WAIT_S = 60.0
STOP_GRACE_S = 10.0


def read_procfile(path: Path, config: str) -> list[tuple[str, list[str]]]:
    procs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, cmd = line.partition(":")
        procs.append((name.strip(), shlex.split(cmd.strip().replace("{config}", config))))
    return procs


def start_order(procs: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """The store's emulator first, the rest in Procfile order."""
    return sorted(procs, key=lambda p: p[0] != STORE_PROCESS)


class Multiplexer:
    """Prefixes and prints the children's output line by line, as soon as each line arrives.

    Reads raw bytes from each pipe (os.read after select): a buffered readline would pull a
    burst of lines into its buffer, print one, and leave the rest until the pipe's next write.
    """

    def __init__(self, out: TextIO, width: int) -> None:
        self.out = out
        self.width = width
        self.tty = out.isatty()
        self.sel = selectors.DefaultSelector()
        self.partial: dict[int, bytes] = {}

    def add(self, name: str, color: str, fd: int) -> None:
        self.partial[fd] = b""
        self.sel.register(fd, selectors.EVENT_READ, (name, color))

    def open_streams(self) -> int:
        return len(self.sel.get_map())

    def pump(self, timeout_s: float) -> None:
        """Print every complete line that is readable within `timeout_s`."""
        for key, _ in self.sel.select(timeout=timeout_s):
            fd = key.fd
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            name, color = key.data
            if not data:  # EOF: print an unterminated last line, then forget the stream
                if self.partial[fd]:
                    self._emit(name, color, self.partial[fd] + b"\n")
                self.sel.unregister(fd)
                os.close(fd)
                del self.partial[fd]
                continue
            buf = self.partial[fd] + data
            cut = buf.rfind(b"\n") + 1
            self.partial[fd] = buf[cut:]
            if cut:
                self._emit(name, color, buf[:cut])

    def _emit(self, name: str, color: str, chunk: bytes) -> None:
        prefix = f"{name:<{self.width}} | "
        if self.tty:
            prefix = f"\033[{color}m{prefix}\033[0m"
        text = chunk.decode(errors="replace")
        self.out.write("".join(prefix + line for line in text.splitlines(keepends=True)))
        self.out.flush()


def store_ready(config: str) -> bool:
    """The configured bucket exists and answers (the services' own readiness check)."""
    from shared.config import load_config
    from shared.health import store_reachable as check
    from shared.store import open_store

    cfg = load_config(config)
    store = open_store(cfg.sync.store_url, emulator_host=cfg.sync.emulator_host, timeout_s=2)
    try:
        check(store)
    except Exception:
        return False
    return True


class Launcher:
    def __init__(self, config: str, procs: list[tuple[str, list[str]]]) -> None:
        self.config = config
        self.procs = procs
        self.mux = Multiplexer(sys.stdout, max(len(n) for n, _ in procs))
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.failed = False

    def start(self, index: int, name: str, cmd: list[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        p = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.children[name] = p
        assert p.stdout is not None
        self.mux.add(name, COLORS[index % len(COLORS)], os.dup(p.stdout.fileno()))
        p.stdout.close()
        print(f"started {name} pid={p.pid}: {' '.join(cmd)}", flush=True)

    def check_children(self) -> None:
        dead = [n for n, p in self.children.items() if p.poll() is not None]
        if dead and not self.stopping:
            print(f"{', '.join(dead)} exited; stopping the others", flush=True)
            self.stopping = self.failed = True

    def wait_for_store(self) -> None:
        """Pump output until the bucket answers; give up (and stop) after STORE_WAIT_S."""
        deadline = time.monotonic() + STORE_WAIT_S
        while not self.stopping:
            if store_ready(self.config):
                return
            if time.monotonic() >= deadline:
                print(f"the object store did not answer within {STORE_WAIT_S:g}s", flush=True)
                self.stopping = self.failed = True
                return
            self.mux.pump(0.2)
            self.check_children()

    def run(self) -> int:
        order = start_order(self.procs)
        for i, (name, cmd) in enumerate(order):
            if self.stopping:
                break
            self.start(i, name, cmd)
            if name == STORE_PROCESS and len(order) > 1:
                self.wait_for_store()
        while not self.stopping and self.mux.open_streams():
            self.mux.pump(0.5)
            self.check_children()
        self.stop_all()
        return 1 if self.failed else 0

    def stop_all(self) -> None:
        """SIGTERM every child, print what they log while stopping, SIGKILL the late ones."""
        for p in self.children.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(p.poll() is None for p in self.children.values()):
            self.mux.pump(0.05)
        for name, p in self.children.items():
            if p.poll() is None:
                print(f"{name} did not stop in time; killing it", flush=True)
                os.killpg(p.pid, signal.SIGKILL)  # its session: the emulator's server too
                p.wait()
        # the last lines: a pipe reaches EOF once its writers are gone (bounded: an orphaned
        # grandchild could hold one open)
        drain_until = time.monotonic() + 2.0
        while self.mux.open_streams() and time.monotonic() < drain_until:
            self.mux.pump(0.1)
        print("all stopped", flush=True)


URL_FILE = ROOT / "var" / "cloud-catalog.url"


def start_catalog(kind: str, procs: list[tuple[str, list[str]]]) -> Any:
    """For CLOUD_CATALOG=postgresql: the local cluster, its URL written down and given to the
    cloud API's command line. Otherwise the cloud API keeps its SQLite file."""
    URL_FILE.unlink(missing_ok=True)
    if kind in ("", "sqlite"):
        return None
    if kind != "postgresql":
        raise SystemExit(f"CLOUD_CATALOG must be sqlite or postgresql, got {kind!r}")
    from deploy.pgcluster import Cluster

    # port 5433 beside a system PostgreSQL's 5432; HPACS_DEV_PGPORT=0 takes a free one
    port = int(os.environ.get("HPACS_DEV_PGPORT", "5433"))
    cluster = Cluster(URL_FILE.parent / "postgres", port=port, fast=False)  # durable: kept
    cluster.start()
    try:
        url = cluster.create_database("hpacs")
        URL_FILE.write_text(url + "\n")
    except BaseException:
        cluster.stop()  # never leave a server behind
        raise
    for name, cmd in procs:
        if name == "cloud":
            cmd += ["--catalog", url]
    print(f"postgres listening, catalog {url} (also in {URL_FILE})", flush=True)
    return cluster


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="deploy/hpacs.dev.toml")
    ap.add_argument("--procfile", default=str(ROOT / "deploy" / "Procfile"))
    args = ap.parse_args()
    os.chdir(ROOT)
    procs = read_procfile(Path(args.procfile), args.config)
    cluster = start_catalog(os.environ.get("CLOUD_CATALOG", ""), procs)
    launcher = Launcher(args.config, procs)

    def _stop(_sig: int, _frm: object) -> None:
        launcher.stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        return launcher.run()
    finally:
        if cluster is not None:
            cluster.stop()
            print("postgres stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
