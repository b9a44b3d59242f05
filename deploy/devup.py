"""Run every process of the Procfile in the foreground with prefixed logs (`make up`).

Ctrl-C or SIGTERM stops them all (SIGTERM, then SIGKILL after a grace period); if one dies,
the others are stopped too, so a broken start is visible at once.
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
