"""A local PostgreSQL cluster for development, tests and benchmarks (never for production).

`make up` with `CLOUD_CATALOG=postgresql` keeps one under `var/postgres`; the test suite and
`bench/catalog.py` start a temporary one. Debian's server binaries (`/usr/lib/postgresql/<v>/bin`,
installed by `make deps`); `initdb` and `postgres` refuse to run as root, so as root the cluster
belongs to the `postgres` user (the directory is chown'ed to it) and the server runs as that user.
The server listens on 127.0.0.1 on a free port, its socket in the cluster directory; `trust`
authentication for the local `hpacs` role (loopback only, throwaway data).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROLE = "hpacs"
# Durability is not what a throwaway cluster is for: these keep tests fast on a shared disk.
FAST = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise RuntimeError("PostgreSQL's server is not installed (make deps installs it)")
    return found[-1].parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    root: Path
    port: int = 0
    fast: bool = True
    settings: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{dbname}"

    def _as_owner(self) -> dict[str, object]:
        """Popen arguments that run a server binary as an unprivileged user when we are root."""
        if os.geteuid() != 0:
            return {}
        pw = pwd.getpwnam("postgres")
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def init(self) -> None:
        """initdb once (an existing cluster directory is reused)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        if (self.data / "PG_VERSION").exists():
            return
        done = subprocess.run(
            [str(bin_dir() / "initdb"), "-D", str(self.data), "-U", ROLE, "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **self._as_owner(),
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"initdb failed (as root the cluster belongs to the postgres user, which must be "
                f"able to reach {self.root}): {done.stderr.decode(errors='replace')[-500:]}"
            )

    def start(self, timeout_s: float = 60.0) -> None:
        self.init()
        self.port = self.port or free_port()
        opts = [
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
            "-c", "max_connections=200", "-c", "shared_buffers=64MB",
        ]  # fmt: skip
        for s in (*(FAST if self.fast else ()), *self.settings):
            opts += ["-c", s]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server's stderr
        self.proc = subprocess.Popen(
            [str(bin_dir() / "postgres"), "-D", str(self.data), "-p", str(self.port), *opts],
            stdout=log, stderr=log, start_new_session=True, **self._as_owner(),
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = (self.root / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"postgres exited at start:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if self._accepts():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("postgres did not accept connections in time")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
