"""How the cloud API's aiohttp server runs: the one runner every entry point and test uses."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http import HttpProcessingError


class _OneLine(logging.Filter):
    """aiohttp logs a malformed request (a 9 KB request line, an oversized header) with a
    traceback per request; one WARNING line is enough and cannot flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # the error's message quotes the request line (a query may hold a patient name)
            record.msg = "malformed request refused status=%s from=%s error=%s"
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else ""
            record.args = (exc.code, peer, type(exc).__name__)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


HTTP_LOG = logging.getLogger("hpacs.cloud.http")
HTTP_LOG.addFilter(_OneLine())
# aiohttp's parser limits (its defaults, stated so they are ours): a longer request line or
# header field is answered 400 by aiohttp before any route, logged as one line (above).
MAX_LINE_BYTES = MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner every entry point and test uses: no access log (the audit trail is ours),
    our parser limits and the one-line logger for malformed requests."""
    return web.AppRunner(
        app,
        access_log=None,
        logger=HTTP_LOG,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_FIELD_BYTES,
        max_headers=MAX_HEADERS,
    )
