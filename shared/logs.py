"""Logging set-up: one line per event with structured key=value pairs, no PHI at INFO.

Every record is one line. Values that reach a log line (UIDs, AE titles, paths, error texts)
come from peers and files: a CR, LF or NUL in them would forge lines. `SafeFormatter` escapes
every control character of the formatted message (`\n`, `\r`, `\x00`, ...), whatever the
logger, so no handler of ours ever writes a raw one; tracebacks keep their line breaks, every
continuation line indented (`  | `), so a line starting at column 0 is always a record.
"""

from __future__ import annotations

import logging
import sys
from typing import Any


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


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators.
_CONTROLS = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_ESCAPES = str.maketrans({c: _NAMED.get(chr(c), f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")
                          for c in _CONTROLS})  # fmt: skip


def escape(text: str) -> str:
    """`text` with every control character written as an escape (one line, printable)."""
    return text.translate(_ESCAPES)


class SafeFormatter(logging.Formatter):
    """A Formatter whose output never carries a raw control character from a value."""

    def format(self, record: logging.LogRecord) -> str:
        # logging caches the traceback text on the record: another handler's formatter may
        # have filled it unescaped, so render ours and leave theirs as it was.
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indent(super().formatStack(stack_info))


def _indent(text: str) -> str:
    return "\n".join("  | " + escape(line) for line in text.splitlines())


def setup_logging(level: str = "INFO", service: str = "hpacs") -> None:
    fmt = f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"
    handler = _StderrHandler()
    handler.setFormatter(SafeFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at DEBUG and each association at INFO: keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # Python warnings (pydicom, pynetdicom) are written raw to stderr unless logged: log them.
    logging.captureWarnings(True)
