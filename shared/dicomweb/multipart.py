"""multipart/related framing (RFC 2046, PS3.18 8.6): a writer for responses, a reader for STOW.

The reader is our own, push-style and without I/O: aiohttp's refuses boundaries over 70
characters, and Orthanc's DICOMweb plugin sends 73. `MultipartParser.feed` takes bytes as they
arrive and returns events (`PartStart`, part data as `bytes`, `PartEnd`); memory stays within
one chunk plus one boundary whatever the part sizes. Every malformed body is a `BadRequest`
(400), never an exception from deep inside a library.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from shared.dicomweb.media import MediaRange, parse_content_type
from shared.errors import BadRequest, UnsupportedMediaType

# RFC 2046 allows 70 characters; real peers send more (Orthanc: 73). Anything up to this is
# accepted, longer is a 400: a boundary is searched for in every chunk of the body.
MAX_BOUNDARY = 200
MAX_HEADER_BYTES = 16 * 1024
_BOUNDARY_RE = re.compile(r"^[\x20-\x7e]*[\x21-\x7e]$")  # printable, not ending in a space


# ---- writer -------------------------------------------------------------------------------------


def new_boundary() -> str:
    return "hpacs-" + secrets.token_hex(12)


def part_header(boundary: str, content_type: str, first: bool, extra: str = "") -> bytes:
    """The delimiter and headers that open a part (`extra`: more header lines, CRLF-ended)."""
    lead = b"" if first else b"\r\n"
    return lead + f"--{boundary}\r\nContent-Type: {content_type}\r\n{extra}\r\n".encode()


def closing(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


def content_type(boundary: str, part_type: str) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def body(parts: list[tuple[str, bytes]], boundary: str) -> bytes:
    """A whole multipart body of (content type, bytes) parts, for small responses."""
    out = bytearray()
    for i, (ctype, data) in enumerate(parts):
        out += part_header(boundary, ctype, i == 0)
        out += data
    out += closing(boundary)
    return bytes(out)


# ---- reader -------------------------------------------------------------------------------------


def stow_boundary(header: str | None, part_type: str = "application/dicom") -> str:
    """The boundary of a STOW request's Content-Type; 415 unless multipart/related of
    `part_type` parts (or no type), 400 when the boundary is missing, repeated or unusable."""
    if header is None or not header.strip():
        raise UnsupportedMediaType(
            "STOW-RS takes multipart/related; the request has no Content-Type"
        )
    ctype: MediaRange = parse_content_type(header)
    if ctype.type != "multipart/related":
        raise UnsupportedMediaType(f"STOW-RS takes multipart/related, not {ctype.type}")
    if "type" in ctype.params and ctype.inner not in (part_type, "*/*"):
        raise UnsupportedMediaType(f"STOW-RS here takes {part_type} parts, not {ctype.inner}")
    boundary = ctype.params.get("boundary")
    if boundary is None:
        raise BadRequest("the multipart Content-Type has no boundary")
    check_boundary(boundary)
    return boundary


def check_boundary(boundary: str) -> None:
    if not boundary:
        raise BadRequest("the multipart boundary is empty")
    if len(boundary) > MAX_BOUNDARY:
        raise BadRequest(f"the multipart boundary is longer than {MAX_BOUNDARY} characters")
    if not _BOUNDARY_RE.match(boundary):
        raise BadRequest("the multipart boundary has characters a boundary may not have")


@dataclass(frozen=True)
class PartStart:
    headers: dict[str, str]  # lower-case names

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartEnd | bytes

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _DONE = range(5)
_PADDING = b" \t"


class MultipartParser:
    """Push parser for one multipart body; `feed` as bytes arrive, then `finish`."""

    def __init__(self, boundary: str) -> None:
        check_boundary(boundary)
        self._delim = b"\r\n--" + boundary.encode("ascii")
        # the first delimiter may open the body without a CRLF before it
        self._buf = b"\r\n"
        self._state = _PREAMBLE
        self._seen_bytes = False
        self.parts = 0

    def feed(self, data: bytes) -> list[Event]:
        if data:
            self._seen_bytes = True
        self._buf += data
        events: list[Event] = []
        while True:
            before = (self._state, len(self._buf))
            self._step(events)
            if (self._state, len(self._buf)) == before:
                return events

    def finish(self) -> list[Event]:
        """Events still due at the end of the body; BadRequest if the body is incomplete."""
        events = self.feed(b"")
        if not self._seen_bytes:
            raise BadRequest("the request body is empty")
        if self._state == _PREAMBLE:
            raise BadRequest("the body does not contain the boundary of its Content-Type")
        if self._state != _DONE:
            raise BadRequest("the body ends before the closing boundary")
        return events

    def _step(self, events: list[Event]) -> None:
        if self._state == _PREAMBLE:
            i = self._buf.find(self._delim)
            if i < 0:
                self._buf = self._buf[-(len(self._delim) - 1) :]  # preamble: ignored
                return
            self._buf = self._buf[i + len(self._delim) :]
            self._state = _AFTER_DELIMITER
        elif self._state == _AFTER_DELIMITER:
            self._after_delimiter()
        elif self._state == _HEADERS:
            self._headers(events)
        elif self._state == _BODY:
            self._body(events)
        # _DONE: the epilogue is ignored
        elif self._buf:
            self._buf = b""

    def _after_delimiter(self) -> None:
        buf = self._buf
        if len(buf) < 2:
            return
        if buf.startswith(b"--"):
            self._state, self._buf = _DONE, b""
            return
        stripped = buf.lstrip(_PADDING)
        if not stripped:
            return
        if stripped.startswith(b"\r\n"):
            self._buf, self._state = stripped[2:], _HEADERS
        elif stripped == b"\r":
            return
        else:
            raise BadRequest("a boundary delimiter is followed by data on the same line")

    def _headers(self, events: list[Event]) -> None:
        buf = self._buf
        if buf.startswith(b"\r\n"):  # a part without header fields
            block, rest = b"", buf[2:]
        else:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise BadRequest("a part's header fields are too long")
                return
            if end > MAX_HEADER_BYTES:
                raise BadRequest("a part's header fields are too long")
            block, rest = buf[:end], buf[end + 4 :]
        headers: dict[str, str] = {}
        for line in block.split(b"\r\n") if block else []:
            name, colon, value = line.partition(b":")
            if not colon or not name.strip():
                raise BadRequest("a part has a malformed header line")
            try:
                headers[name.strip().decode("ascii").lower()] = value.decode("latin-1").strip()
            except UnicodeDecodeError:
                raise BadRequest("a part header name is not ASCII") from None
        self._buf, self._state = rest, _BODY
        self.parts += 1
        events.append(PartStart(headers))

    def _body(self, events: list[Event]) -> None:
        buf = self._buf
        i = buf.find(self._delim)
        if i >= 0:
            if i:
                events.append(buf[:i])
            events.append(PartEnd())
            self._buf, self._state = buf[i + len(self._delim) :], _AFTER_DELIMITER
            return
        keep = len(self._delim) - 1  # a delimiter may straddle this chunk and the next
        if len(buf) > keep:
            events.append(buf[: len(buf) - keep])
            self._buf = buf[len(buf) - keep :]


async def events(chunks: AsyncIterable[bytes], boundary: str) -> AsyncIterator[Event]:
    """The events of a whole body read from an async byte stream (aiohttp's, or any other)."""
    parser = MultipartParser(boundary)
    async for chunk in chunks:
        for ev in parser.feed(chunk):
            yield ev
    for ev in parser.finish():
        yield ev
