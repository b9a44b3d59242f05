"""The soak's site: the GCS emulator behind a TCP proxy the soak can cut, and `hpacs-edge serve`,
`hpacs-sync run` and `hpacs-cloud serve` as child processes with one generated config, free
ports and one work directory.

The proxy is the outage: cutting it resets every live connection and then either resets each
new one (`refuse`) or accepts and never answers it (`hang`, so clients meet their timeouts),
while the emulator keeps its objects. Every service reaches the bucket through it; the soak's
own checks read the emulator directly.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.edge import write_toml  # noqa: E402
from tests.support.net import free_port, port_open  # noqa: E402

BUCKET = "hpacs-soak"
SITE = "soak"
EDGE_AE = "HPACS"
SENDER_AES = ["MOD1", "MOD2", "MOD3", "MOD4"]
QR_AE = "SOAKQR"  # C-FIND and C-MOVE requester of the soak
DEST_AE = "SOAKSCP"  # DCMTK storescp, the C-MOVE destination


# ---- the outage ---------------------------------------------------------------------------
class TcpProxy:
    """127.0.0.1:port -> 127.0.0.1:upstream_port, one thread per direction per connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "up"  # "up", "refuse" or "hang"
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._parked: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stopped = False
        threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            live, self._live = self._live, set()
        for s in live:
            _reset(s)

    def restore(self) -> None:
        with self._lock:
            self.mode = "up"
            parked, self._parked = self._parked, []
        for s in parked:
            _reset(s)

    def stop(self) -> None:
        self._stopped = True
        self.cut("refuse")
        self.restore()
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self.mode
                if mode == "hang":
                    self._parked.append(client)
                    continue
            if mode == "refuse":
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self.mode != "up":  # cut while connecting
                    _reset(client)
                    _reset(upstream)
                    continue
                self._live |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._live -= {src, dst}
        for s in (src, dst):
            _close(s)


def _reset(s: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), waking any thread blocked on the socket."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    _close(s)


def _close(s: socket.socket) -> None:
    try:
        s.close()
    except OSError:
        pass


# ---- the services -------------------------------------------------------------------------
@dataclass
class Service:
    """One hpacs process; restarted after a kill -9 with the same command and log file."""

    name: str
    argv: list[str]
    log: Path
    ready_port: int = 0  # the service is up once this port accepts connections
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    restart_s: list[float] = field(default_factory=list)  # kill -> ready again, seconds

    def start(self) -> None:
        with open(self.log, "ab") as fh:
            fh.write(f"\n==== soak: start #{self.starts + 1} at {time.time():.3f}\n".encode())
            fh.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=dict(os.environ, PYTHONUNBUFFERED="1", TCP_NODELAY="1"),
                start_new_session=True,  # a Ctrl-C of the soak reaches the soak only
            )
        self.starts += 1

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds until the ready port answers (or the process is just alive, without one)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.returncode()}; see {self.log}")
            if not self.ready_port or port_open(self.ready_port):
                return time.monotonic() - t0
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s; see {self.log}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with open(self.log, "ab") as fh:
            fh.write(f"==== soak: kill -9 at {time.time():.3f}\n".encode())

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after timeout_s; the exit status (None if it was killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.returncode()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


@dataclass
class SiteOptions:
    cache_high: str = "40MB"
    cache_low: str = "25MB"
    min_cache_age_s: float = 5.0
    evict_interval_s: float = 5.0
    scrub_bytes_per_s: int = 8 * 1024 * 1024
    upload_timeout_s: float = 10.0
    backoff_max_s: float = 10.0
    log_level: str = "INFO"


def site_config(work: Path, emulator_url: str, opts: SiteOptions) -> dict[str, Any]:
    """The one config file all three services read; every port free, every path under work."""
    nodes: list[dict[str, Any]] = [
        {"ae_title": ae, "host": "127.0.0.1", "port": 104, "permissions": ["echo", "store"]}
        for ae in SENDER_AES
    ]
    nodes.append(
        {
            "ae_title": QR_AE,
            "host": "127.0.0.1",
            "port": 104,
            "permissions": ["echo", "find", "move"],
        }
    )
    nodes.append({"ae_title": DEST_AE, "host": "127.0.0.1", "port": free_port()})
    return {
        "edge": {
            "ae_title": EDGE_AE,
            "host": "127.0.0.1",
            "port": free_port(),
            "data_dir": str(work / "edge"),
            "min_free_bytes": 0,
            "http_port": 0,
            "log_level": opts.log_level,
            "network_timeout_s": 30.0,
            "tls": {"port": 0},
        },
        "nodes": nodes,
        "sync": {
            "store_url": f"gs://{BUCKET}",
            "site": SITE,
            "emulator_host": emulator_url,
            "upload_concurrency": 4,
            "upload_timeout_s": opts.upload_timeout_s,
            "backoff_initial_s": 0.5,
            "backoff_max_s": opts.backoff_max_s,
            "poll_interval_s": 0.5,
            "catalog_batch": 200,
            "cache_high_watermark": opts.cache_high,
            "cache_low_watermark": opts.cache_low,
            "min_cache_age_s": opts.min_cache_age_s,
            "evict_interval_s": opts.evict_interval_s,
            "status_log_interval_s": 30.0,
            "scrub_bytes_per_s": opts.scrub_bytes_per_s,
        },
        "cloud": {
            "host": "127.0.0.1",
            "port": free_port(),
            "store_url": f"gs://{BUCKET}",
            "data_dir": str(work / "cloud"),
            "tokens_file": str(work / "cloud" / "tokens.json"),
            "catalog_poll_interval_s": 2.0,
            "query_max_results": 100000,
            "audit_ship_interval_s": 10.0,
            "log_level": opts.log_level,
        },
    }


class Site:
    """The three services of one site on one config; `emulator_port` is the real emulator."""

    def __init__(self, work: Path, emulator_port: int, opts: SiteOptions) -> None:
        self.work = work
        self.emulator_port = emulator_port
        self.proxy = TcpProxy(emulator_port)
        self.data = site_config(work, self.proxy.url, opts)
        self.config = write_toml(work / "hpacs.toml", self.data)
        bin_ = Path(sys.executable).parent
        cfg = ["--config", str(self.config)]
        e, c = self.data["edge"], self.data["cloud"]
        logs = work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.edge = Service("edge", [str(bin_ / "hpacs-edge"), *cfg, "serve"], logs / "edge.log")
        self.edge.ready_port = int(e["port"])
        self.sync = Service("sync", [str(bin_ / "hpacs-sync"), *cfg, "run"], logs / "sync.log")
        self.cloud = Service(
            "cloud", [str(bin_ / "hpacs-cloud"), *cfg, "serve"], logs / "cloud.log"
        )
        self.cloud.ready_port = int(c["port"])
        self.token = self._admin_token()

    @property
    def services(self) -> list[Service]:
        return [self.edge, self.sync, self.cloud]

    @property
    def edge_port(self) -> int:
        return int(self.data["edge"]["port"])

    @property
    def dest_port(self) -> int:
        return int(next(n["port"] for n in self.data["nodes"] if n["ae_title"] == DEST_AE))

    @property
    def cloud_url(self) -> str:
        return f"http://127.0.0.1:{self.data['cloud']['port']}"

    @property
    def index_path(self) -> Path:
        return Path(self.data["edge"]["data_dir"]) / "index.sqlite"

    @property
    def cache_dir(self) -> Path:
        return Path(self.data["edge"]["data_dir"]) / "cache"

    def _admin_token(self) -> str:
        r = self.cli("hpacs-cloud", "token", "create", "--role", "admin", "--name", "soak")
        if r.returncode != 0:
            raise RuntimeError(f"token create failed: {r.stderr}")
        return r.stdout.strip().splitlines()[0]

    def cli(self, exe: str, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """An admin command against this site's config (hpacs-cloud audit verify, ...)."""
        return subprocess.run(
            [str(Path(sys.executable).parent / exe), "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )

    def start(self) -> None:
        for svc in self.services:
            svc.start()
        for svc in self.services:
            svc.wait_ready()

    def stop(self) -> dict[str, int | None]:
        """Stop every service (SIGTERM); their exit statuses."""
        codes = {svc.name: svc.stop() for svc in self.services}
        self.proxy.stop()
        return codes
