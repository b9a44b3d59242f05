"""Media types and transfer syntaxes of DICOMweb (PS3.18 8.7): parse, label, negotiate.

Pure. `parse_accept` reads an Accept header (several media ranges, quoted parameters, q-values);
the `negotiate_*` functions turn it into what to send for one resource category, or raise
`NoConversion` (406) naming what was asked. What hpacs can produce is decided by
`shared.transcode` (the same rules as DIMSE retrieve: decode anything we have a decoder for,
re-encode losslessly only).

Choices where the standard leaves room (also in docs/conformance.md):
- No Accept, `*/*`, `multipart/*` or a multipart without `type`: the stored syntax, unchanged
  (a client without a preference gets the archive's bytes).
- A media type without `transfer-syntax` gets its PS3.18 default (Explicit VR Little Endian for
  `application/dicom` and `application/octet-stream`); a compressed pixel media type
  (`image/jpeg`, ...) without it accepts any syntax of that media type, stored one first.
- `transfer-syntax=*`: the stored syntax; every part says which one it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shared.errors import BadRequest, NoConversion
from shared.transcode import choose, ts_name

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
NATIVE_LE = (EXPLICIT_LE, IMPLICIT_LE)  # native pixel bytes are the same in both

# PS3.18 Table 8.7.3-x: media types of compressed pixel data, their syntaxes, default first.
PIXEL_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
    ),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    "video/mpeg": ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"),
    "video/mp4": tuple(f"1.2.840.10008.1.2.4.{n}" for n in range(102, 107)),
    "video/h265": ("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"),
}
# names clients still send for the same media types (older editions of PS3.18)
ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
_MEDIA_OF_TS = {ts: media for media, tss in PIXEL_MEDIA_TYPES.items() for ts in tss}

OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"
RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")
JSON_TYPES = ("application/dicom+json", "application/json")


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header (or a Content-Type): lower-cased type, params, q."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def inner(self) -> str:
        """The type of the parts a multipart range asks for (`*/*` when it names none)."""
        t = self.params.get("type", "*/*").lower()
        return ALIASES.get(t, t)

    @property
    def transfer_syntax(self) -> str | None:
        ts = self.params.get("transfer-syntax")
        return ts.strip() if ts is not None else None


def frame_media_type(ts: str) -> str:
    """The media type a frame (or bulk pixel data) in syntax `ts` travels as."""
    if ts in NATIVE_LE or ts in (DEFLATED_LE, BIG_ENDIAN):
        return OCTET_STREAM
    return _MEDIA_OF_TS.get(ts, OCTET_STREAM)


def part_type(media: str, ts: str) -> str:
    """A part's Content-Type: always with its transfer syntax (a bare `image/jpeg` is read as
    baseline by viewers, which blackens JPEG-lossless frames)."""
    return f"{media}; transfer-syntax={ts}"


# ---- parsing ------------------------------------------------------------------------------------


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes (a quoted type may hold any character)."""
    out, cur, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            cur.append(ch)
            escaped = True
        elif ch == '"':
            cur.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise BadRequest("unbalanced quotes in a media type")
    out.append("".join(cur))
    return out


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner, out, i = value[1:-1], [], 0
        while i < len(inner):
            if inner[i] == "\\" and i + 1 < len(inner):
                i += 1
            out.append(inner[i])
            i += 1
        return "".join(out)
    return value


def parse_media_type(text: str, *, unique_params: bool = False) -> MediaRange:
    """One `type/subtype; name=value; ...`; BadRequest when it is not one."""
    pieces = _split(text, ";")
    mtype = pieces[0].strip().lower()
    if mtype == "*":
        mtype = "*/*"  # some HTTP clients send a bare "*"
    main, slash, sub = mtype.partition("/")
    if not slash or not main or not sub or any(c in mtype for c in ' \t"'):
        raise BadRequest(f"not a media type: {text.strip()[:60]!r}")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        if not piece.strip():
            continue
        name, eq, value = piece.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            raise BadRequest(f"malformed media type parameter {piece.strip()[:40]!r}")
        if name == "q":
            q = _qvalue(value)
            continue
        if unique_params and name in params:
            raise BadRequest(f"the media type names {name!r} twice")
        params[name] = _unquote(value)
    return MediaRange(mtype, params, q)


def _qvalue(text: str) -> float:
    try:
        q = float(text.strip())
    except ValueError:
        raise BadRequest(f"q must be a number from 0 to 1, got {text.strip()[:20]!r}") from None
    if not 0.0 <= q <= 1.0:  # also refuses nan
        raise BadRequest(f"q must be a number from 0 to 1, got {text.strip()[:20]!r}")
    return q


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges by preference (q descending, then order); q=0 ranges are dropped, and so
    are malformed ones (RFC 9110 lets a server ignore them). No header, or nothing usable in
    it, is `*/*`."""
    ranges = []
    try:
        pieces = _split(header or "", ",")
    except BadRequest:
        pieces = []
    for piece in pieces:
        if not piece.strip():
            continue
        try:
            ranges.append(parse_media_type(piece))
        except BadRequest:
            continue
    if not ranges:
        return [MediaRange("*/*")]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)  # sorted() is stable: equal q keep their order


def parse_content_type(header: str | None) -> MediaRange:
    """A Content-Type (each parameter at most once)."""
    if header is None or not header.strip():
        raise BadRequest("the request has no Content-Type")
    return parse_media_type(header, unique_params=True)


def _is_any(r: MediaRange) -> bool:
    return r.type in ("*/*", "multipart/*") or (r.type == "multipart/related" and r.inner == "*/*")


# ---- negotiation --------------------------------------------------------------------------------


def _producible(stored: str, target: str) -> bool:
    try:
        choose(stored, [target])
    except NoConversion:
        return False
    return True


def _refuse(what: str, ranges: Sequence[MediaRange], stored: Iterable[str]) -> NoConversion:
    asked = ", ".join(_show(r) for r in ranges) or "nothing"
    have = ", ".join(sorted({ts_name(s) for s in stored}))
    return NoConversion(f"{what}: stored as {have}; cannot produce any of: {asked}")


def _show(r: MediaRange) -> str:
    extra = "".join(f"; {k}={v}" for k, v in r.params.items())
    return f"{r.type}{extra}"[:120]


def negotiate_instances(ranges: Sequence[MediaRange], stored: Iterable[str]) -> dict[str, str]:
    """For whole instances (`application/dicom`): stored syntax -> syntax to send, for every
    stored syntax of the request; NoConversion (406) when one of them has no acceptable target."""
    stored = sorted(set(stored))
    plan: dict[str, str] = {}
    for ts in stored:
        for r in ranges:
            target = _instance_target(r, ts)
            if target is not None and _producible(ts, target):
                plan[ts] = target
                break
        else:
            raise _refuse("instances", ranges, stored)
    return plan


def _instance_target(r: MediaRange, stored: str) -> str | None:
    """What one media range asks for an instance stored in `stored`; None: not this range."""
    if _is_any(r) and r.transfer_syntax in (None, "*"):
        return stored
    if r.type == "multipart/related" and r.inner in ("*/*", "application/*", DICOM):
        pass
    elif r.type in (DICOM, "*/*", "application/*"):
        pass  # single-part ranges: answered as multipart/related (every client we know reads it)
    else:
        return None
    ts = r.transfer_syntax
    if ts == "*":
        return stored
    return ts or EXPLICIT_LE


def negotiate_frames(ranges: Sequence[MediaRange], stored: str) -> str:
    """The transfer syntax to send frames (or pixel bulk data) of an instance stored in `stored`
    in; the part media type follows from it (`frame_media_type`)."""
    for r in ranges:
        for target in _frame_targets(r, stored):
            if _producible(stored, target):
                return target
    raise _refuse("frames", ranges, [stored])


def _frame_targets(r: MediaRange, stored: str) -> list[str]:
    # a single-part range is answered as multipart/related (as every server we know does)
    inner = r.inner if r.type.startswith("multipart/") else ALIASES.get(r.type, r.type)
    ts = r.transfer_syntax
    if inner in ("*/*", "image/*", "video/*"):
        if ts in (None, "*"):
            return [stored] if _family_ok(inner, stored) else []
        return [ts]
    if inner == OCTET_STREAM:
        if ts == "*":
            return [stored]  # labelled with its real media type, as OHIF expects
        if ts is None:
            return [EXPLICIT_LE]
        return [ts] if ts in NATIVE_LE or ts == stored else []
    allowed = PIXEL_MEDIA_TYPES.get(inner)
    if allowed is None:
        return []
    if ts in (None, "*"):
        return sorted(allowed, key=lambda t: t != stored)  # the stored one first, then default
    return [ts] if ts in allowed else []


def _family_ok(inner: str, stored: str) -> bool:
    if inner == "*/*":
        return True
    return frame_media_type(stored).startswith(inner[:-1])


def negotiate_rendered(ranges: Sequence[MediaRange]) -> str:
    """The rendered media type (PS3.18 8.7.4): JPEG by default, PNG and GIF on request. A
    multipart range counts by its `type` (rendered studies and series are multipart)."""
    for r in ranges:
        t = r.inner if r.type.startswith("multipart/") else r.type
        if t in RENDERED_TYPES:
            return t
        if t in ("*/*", "image/*"):
            return "image/jpeg"
    raise NoConversion(
        "rendered media types are image/jpeg, image/png and image/gif; asked: "
        + (", ".join(_show(r) for r in ranges) or "nothing")
    )


def accepts_json(ranges: Sequence[MediaRange]) -> bool:
    """Whether metadata (DICOM JSON) is acceptable; `application/dicom+xml` alone is not."""
    return any(r.type in JSON_TYPES or r.type in ("*/*", "application/*") for r in ranges)


def accepts_bulk(ranges: Sequence[MediaRange]) -> bool:
    """Whether non-pixel bulk data (`application/octet-stream` parts) is acceptable."""
    for r in ranges:
        t = r.inner if r.type.startswith("multipart/") else r.type
        if t in (OCTET_STREAM, "*/*", "application/*"):
            return True
    return False
