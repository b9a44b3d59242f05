"""Several acceptor processes on one port (`edge.acceptors` > 1).

Why: one Python process is GIL-bound at about one core of DIMSE decoding; several concurrent
associations need more. Each child listens on the same port(s) with SO_REUSEPORT (the kernel
spreads new connections), has its own Database writer and group commit, and writes the one
WAL-mode index. Association limits hold across children through edge/slots.py.

The parent keeps everything else (start-up reconcile, HTTP, hot folder, forwarder). Children
are started with the 'spawn' method (never fork a threaded process), stop on SIGTERM/SIGINT,
and die with the parent: PR_SET_PDEATHSIG, plus a parent-pid check for the start-up race.
The kernel re-sends PDEATHSIG once per exiting thread of the parent, so the child's signal
handling takes no lock (shared/signals.py), and a stopped child skips the interpreter's
teardown (os._exit once its server and index are closed).
Metrics counters are per process: the DIMSE counters on the parent's /metrics do not include
the children's associations (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from typing import Any

from shared.config import Config

log = logging.getLogger("hpacs.edge.acceptors")

PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 60.0


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when the parent dies (kill -9 included); exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent-pid watch below still applies
        pass
    if os.getppid() != parent_pid:
        os._exit(0)


def child_main(cfg: Config, parent_pid: int, ready: Any, index: int) -> None:
    """Entry point of one acceptor process: serve DIMSE until told to stop."""
    _die_with_parent(parent_pid)
    from edge.forwarder import attach_routing
    from edge.runtime import configure
    from edge.server import EdgeServer
    from shared.index import Database
    from shared.logs import setup_logging
    from shared.signals import call_on_signals

    setup_logging(cfg.edge.log_level, f"edge[acceptor {index}]")
    configure()
    stop = threading.Event()
    call_on_signals(lambda _signum: stop.set())  # never Event.set() inside a signal handler
    db = Database(cfg.edge.index_path)
    server = EdgeServer(cfg, db, reuse_port=True)
    attach_routing(server.ingestor, cfg.routes)
    try:
        server.start(retrier=False)  # the parent runs the commitment report queue
        ready.send((index, os.getpid(), ""))
        while not stop.wait(1.0):
            if os.getppid() != parent_pid:  # belt and braces beside PDEATHSIG
                break
    except Exception as exc:
        ready.send((index, os.getpid(), f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        server.stop()
        db.close()
    # Everything that must end cleanly has (associations, index); skip the interpreter's
    # teardown of every imported module, which took 0.5-3 s on a loaded machine and kept an
    # orphaned acceptor alive that long after its parent's kill -9.
    ready.close()  # a pipe: our "ready" message was written by send() itself, nothing queued
    logging.shutdown()
    os._exit(0)


class Acceptors:
    """The parent's handle on its acceptor children: start, watch, stop."""

    def __init__(self, cfg: Config, count: int) -> None:
        self.cfg = cfg
        self.count = count
        self._ctx = multiprocessing.get_context("spawn")
        # A pipe, not a multiprocessing.Queue: a Queue's named semaphores outlive a parent
        # killed with -9, and the resource tracker then writes a warning into the edge's log.
        # One small message per child is written atomically (under PIPE_BUF).
        self._ready_in, self._ready = self._ctx.Pipe(duplex=False)
        self.procs: list[Any] = []

    def _spawn(self, index: int) -> Any:
        p = self._ctx.Process(
            target=child_main,
            args=(self.cfg, os.getpid(), self._ready, index),
            name=f"hpacs-acceptor-{index}",
            daemon=True,
        )
        p.start()
        return p

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start every child and wait until each listens; raise if one could not."""
        if not self.cfg.edge.port and not self.cfg.edge.tls.port:
            raise ValueError("edge.acceptors > 1 needs a fixed edge.port or edge.tls.port")
        self.procs = [self._spawn(i) for i in range(self.count)]
        for _ in range(self.count):
            if not self._ready_in.poll(timeout_s):
                self.stop()
                raise RuntimeError(f"acceptors did not report ready within {timeout_s:g} s")
            index, pid, error = self._ready_in.recv()
            if error:
                self.stop()
                raise RuntimeError(f"acceptor {index} (pid {pid}) failed to start: {error}")
        log.info("acceptors ready count=%d pids=%s", self.count, [p.pid for p in self.procs])

    def check(self) -> None:
        """Restart a child that died while the node runs (a crash must not shrink the node)."""
        for i, p in enumerate(self.procs):
            if not p.is_alive():
                log.error("acceptor %d (pid %s) exited with %s; restarting", i, p.pid, p.exitcode)
                self.procs[i] = self._spawn(i)

    def stop(self, timeout_s: float = 30.0) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the child finishes its associations' current work
        for p in self.procs:
            p.join(timeout_s)
            if p.is_alive():
                log.error("acceptor pid %s did not stop; killing it", p.pid)
                p.kill()
                p.join()
        self.procs = []
