"""Stop requests from SIGTERM/SIGINT, delivered to a normal thread.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds a lock the handler wants. `threading.Event.set()` in a handler deadlocked when
a signal arrived inside `Event.wait()`'s or another handler's `set()`: an acceptor process
whose multi-threaded parent was killed gets one SIGTERM per exiting parent thread (the kernel
re-sends PR_SET_PDEATHSIG as it reparents the child to each sibling thread), so nested
handlers met the Event's lock and the orphan hung, still listening. Here the handler only
writes the signal number to a pipe (no lock, async-signal-safe); a daemon thread reads it and
calls the callback, where taking locks and logging are fine.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def call_on_signals(callback: Callable[[int], None], signals: Iterable[int] = STOP_SIGNALS) -> None:
    """Call `callback(signum)` from a relay thread for every one of `signals` received.

    Call it from the main thread (Python installs handlers only there); the callback may run
    several times (one per signal) and should be idempotent."""
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)

    def handler(signum: int, _frame: object) -> None:
        try:
            os.write(wfd, bytes([signum]))
        except OSError:  # pipe full: the relay has plenty to do already
            pass

    def relay() -> None:
        while True:
            data = os.read(rfd, 64)
            if not data:
                return
            for signum in data:
                callback(signum)

    threading.Thread(target=relay, name="signals", daemon=True).start()
    for sig in signals:
        signal.signal(sig, handler)
