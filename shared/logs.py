"""Logging set-up: one line per event with structured key=value pairs, no PHI at INFO."""

from __future__ import annotations

import logging
import sys


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at emit time, not the object it was when set up.

    An entry point run in-process (tests, embedding) may set up logging while stderr is a
    temporary capture; a handler bound to that object would later write to a closed file.
    """

    @property  # type: ignore[override]
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def setup_logging(level: str = "INFO", service: str = "hpacs") -> None:
    fmt = f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at DEBUG and each association at INFO: keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
