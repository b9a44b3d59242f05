"""A GCS emulator whose port opens at once and whose bucket appears `--after-s` later.

The window `make up` lost to: a service that lists the bucket between the emulator's port
opening and its bucket being created got a 404. Run as a Procfile entry by tests/test_devup.py;
stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared.store.gcs import GcsStore
from tests.support.gcs import Emulator


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--after-s", type=float, required=True)
    args = ap.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    emu = Emulator(args.port)
    emu.start()
    print(f"emulator port {args.port} open, no bucket yet", flush=True)
    try:
        if not stop.wait(args.after_s):  # the injected delay, not a synchronisation
            GcsStore(f"gs://{args.bucket}", emulator_host=emu.url, timeout_s=5).create_bucket()
            print(f"bucket {args.bucket} created", flush=True)
            stop.wait()
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
