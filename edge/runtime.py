"""Process-wide settings of the edge, made once by each entry point (never at import time).

- pydicom re-validates every UID and value it reads with regular expressions only to warn
  (~10% of the CPU per small instance); ingest validates what it indexes itself
  (shared.uids.is_valid_uid), so reading validation is off.
- pynetdicom is used only for association negotiation and the echo SCU: its own DIMSE
  handlers and their logging are not on any path, so nothing of it needs configuring.
"""

from __future__ import annotations

from pydicom import config as pydicom_config

_done = False


def configure() -> None:
    """Idempotent; called by `hpacs-edge` (every verb), each acceptor process and test servers."""
    global _done
    if _done:
        return
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    _done = True
