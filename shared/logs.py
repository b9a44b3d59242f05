"""Logging set-up: one line per event with structured key=value pairs, no PHI at INFO."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO", service: str = "hpacs") -> None:
    fmt = f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at DEBUG and each association at INFO: keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
