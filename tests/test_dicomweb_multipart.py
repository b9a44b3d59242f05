"""The streaming multipart/related reader and the media-type parsing and negotiation (pure).

The reader is fed bodies cut at every possible position (a delimiter straddling two chunks is
the case that breaks naive readers), with the boundary lengths real peers send (Orthanc: 73)
and every kind of malformed body; a malformed body is always BadRequest.
"""

from __future__ import annotations

import pytest

from shared.dicomweb import media, multipart
from shared.dicomweb.multipart import MultipartParser, PartEnd, PartStart
from shared.errors import BadRequest, NoConversion, UnsupportedMediaType

ELE = "1.2.840.10008.1.2.1"
JPEG_LL = "1.2.840.10008.1.2.4.70"
JLS = "1.2.840.10008.1.2.4.80"


def parse(body: bytes, boundary: str, chunk: int = 0) -> list[tuple[dict[str, str], bytes]]:
    p = MultipartParser(boundary)
    events = []
    step = chunk or len(body) or 1
    for i in range(0, len(body), step):
        events += p.feed(body[i : i + step])
    events += p.finish()
    out: list[tuple[dict[str, str], bytes]] = []
    data = b""
    for ev in events:
        if isinstance(ev, PartStart):
            headers, data = ev.headers, b""
        elif isinstance(ev, PartEnd):
            out.append((headers, data))
        else:
            data += ev
    return out


# near misses of a delimiter inside the data, an empty part, binary data
PARTS = [b"first part \r\n-b \r\n--", b"", b"\r\n--", bytes(range(256)) * 3]


@pytest.mark.parametrize("boundary", ["b", "x" * 70, "orthanc-" + "7" * 65, "y" * 200])
def test_round_trip_at_every_chunk_size(boundary: str) -> None:
    body = multipart.body([("application/dicom", p) for p in PARTS], boundary)
    for chunk in (1, 2, 3, 7, len(boundary) + 3, 64, 1000, 0):
        got = parse(body, boundary, chunk)
        assert [d for _, d in got] == PARTS, chunk
        assert all(h == {"content-type": "application/dicom"} for h, _ in got)


def test_preamble_epilogue_padding_and_parts_without_headers() -> None:
    body = (
        b"preamble to ignore\r\n--bb  \t\r\n\r\none\r\n--bb\r\nContent-Type : x\r\n"
        b"Content-ID: <1>\r\n\r\ntwo\r\n--bb--  trailing epilogue\r\nmore"
    )
    got = parse(body, "bb", 5)
    assert got == [({}, b"one"), ({"content-type": "x", "content-id": "<1>"}, b"two")]


def test_a_body_with_only_the_closing_delimiter_has_no_parts() -> None:
    assert parse(b"--b--\r\n", "b") == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"no delimiter at all", "does not contain the boundary"),
        (b"--other\r\n\r\ndata\r\n--other--", "does not contain the boundary"),
        (b"--b\r\n\r\nno closing delimiter", "ends before the closing"),
        (b"--b\r\n\r\ndata\r\n--b", "ends before the closing"),
        (b"--b\r\nContent-Type: application/dicom\r\n", "ends before the closing"),
        (b"--bX\r\n\r\ndata\r\n--b--", "followed by data"),
        (b"--b\r\nno colon here\r\n\r\ndata\r\n--b--", "malformed header"),
        (b"--b\r\n: empty name\r\n\r\ndata\r\n--b--", "malformed header"),
        (b"--b\r\nX: " + b"y" * 20000 + b"\r\n\r\n\r\n--b--", "too long"),
    ],
)
def test_malformed_bodies_are_bad_requests(body: bytes, reason: str) -> None:
    for chunk in (1, 4, 0):
        with pytest.raises(BadRequest, match=reason):
            parse(body, "b", chunk)


@pytest.mark.parametrize(
    ("ctype", "error", "reason"),
    [
        (None, UnsupportedMediaType, "no Content-Type"),
        ("application/dicom", UnsupportedMediaType, "multipart/related"),
        (
            'multipart/related; type="application/dicom+json"; boundary=b',
            UnsupportedMediaType,
            "dicom",
        ),
        ('multipart/related; type="application/dicom"', BadRequest, "no boundary"),
        ("multipart/related; boundary=a; boundary=b", BadRequest, "twice"),
        ('multipart/related; boundary=""', BadRequest, "empty"),
        ("multipart/related; boundary=" + "z" * 201, BadRequest, "longer than"),
        ('multipart/related; boundary="a\tb"', BadRequest, "characters"),
        ("multipart/related; boundary=b; =x", BadRequest, "malformed"),
        ('multipart/related; boundary="unterminated', BadRequest, "quotes"),
    ],
)
def test_stow_content_types(ctype: str | None, error: type[Exception], reason: str) -> None:
    with pytest.raises(error, match=reason):
        multipart.stow_boundary(ctype)


def test_stow_content_type_with_a_quoted_long_boundary() -> None:
    b = "----=_Orthanc_" + "1" * 59
    assert len(b) == 73
    ctype = f'multipart/related; type="application/dicom"; boundary="{b}"'
    assert multipart.stow_boundary(ctype) == b
    assert multipart.stow_boundary(f"Multipart/Related; boundary={b}") == b


# ---- Accept parsing and negotiation --------------------------------------------------------------


def test_accept_ranges_by_q_then_order_malformed_ones_ignored() -> None:
    got = media.parse_accept(
        'text/html;q=0.1, multipart/related; type="image/jpeg"; q=0.9, garbage, '
        "image/png;q=0, application/json;q=abc, */*;q=0.9"
    )
    assert [(r.type, r.inner, r.q) for r in got] == [
        ("multipart/related", "image/jpeg", 0.9),
        ("*/*", "*/*", 0.9),
        ("text/html", "*/*", 0.1),
    ]
    assert media.parse_accept(None)[0].type == "*/*"
    assert media.parse_accept("  ")[0].type == "*/*"


FRAMES = [
    # Accept, stored syntax, expected target (None: 406)
    ("multipart/related; type=application/octet-stream; transfer-syntax=*", JPEG_LL, JPEG_LL),
    ("multipart/related; type=application/octet-stream; transfer-syntax=*", ELE, ELE),
    ('multipart/related; type="application/octet-stream"', JPEG_LL, ELE),
    (f"multipart/related; type=application/octet-stream; transfer-syntax={ELE}", JPEG_LL, ELE),
    ('multipart/related; type="image/jpeg"', JPEG_LL, JPEG_LL),
    ('multipart/related; type="image/jpeg"', "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.50"),
    ('multipart/related; type="image/jpeg"', ELE, None),  # no JPEG encoder: we never make one
    ('multipart/related; type="image/jls"', ELE, "1.2.840.10008.1.2.4.80"),
    ('multipart/related; type="image/x-jls"', JPEG_LL, "1.2.840.10008.1.2.4.80"),
    ('multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.91', ELE, None),
    ("multipart/related; type=image/dicom-rle", ELE, "1.2.840.10008.1.2.5"),
    ('multipart/related; type="*/*"', JPEG_LL, JPEG_LL),
    ("*/*", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.90"),
    (None, JPEG_LL, JPEG_LL),
    ("application/octet-stream", JPEG_LL, ELE),
    ("application/dicom+xml", JPEG_LL, None),
    # the first range wins even when a later one would need no conversion
    ('multipart/related; type="image/jls", multipart/related; type="image/jpeg"', JPEG_LL, JLS),
]


@pytest.mark.parametrize(("accept", "stored", "expected"), FRAMES)
def test_negotiate_frames(accept: str | None, stored: str, expected: str | None) -> None:
    ranges = media.parse_accept(accept)
    if expected is None:
        with pytest.raises(NoConversion):
            media.negotiate_frames(ranges, stored)
    else:
        assert media.negotiate_frames(ranges, stored) == expected


def test_negotiate_frames_falls_back_to_a_later_range() -> None:
    ranges = media.parse_accept('multipart/related; type="image/jp2", */*;q=0.5')
    assert media.negotiate_frames(ranges, JPEG_LL) in ("1.2.840.10008.1.2.4.90", JPEG_LL)
    ranges = media.parse_accept(
        'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50, '
        'multipart/related; type="application/octet-stream"'
    )
    assert media.negotiate_frames(ranges, ELE) == ELE


INSTANCES = [
    (None, {JPEG_LL: JPEG_LL, ELE: ELE}),
    ("*/*", {JPEG_LL: JPEG_LL, ELE: ELE}),
    ('multipart/related; type="application/dicom"', {JPEG_LL: ELE, ELE: ELE}),
    ('multipart/related; type="application/dicom"; transfer-syntax=*', {JPEG_LL: JPEG_LL}),
    (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2',
        {JPEG_LL: "1.2.840.10008.1.2", ELE: "1.2.840.10008.1.2"},
    ),
    (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80',
        {JPEG_LL: "1.2.840.10008.1.2.4.80"},
    ),
    (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
        None,
    ),
    ('multipart/related; type="application/octet-stream"', None),
]


@pytest.mark.parametrize(("accept", "expected"), INSTANCES)
def test_negotiate_instances(accept: str | None, expected: dict[str, str] | None) -> None:
    ranges = media.parse_accept(accept)
    stored = list(expected) if expected else [ELE]
    if expected is None:
        with pytest.raises(NoConversion):
            media.negotiate_instances(ranges, stored)
    else:
        assert media.negotiate_instances(ranges, stored) == expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "image/jpeg"),
        ("image/png", "image/png"),
        ("image/gif;q=0.5, image/png", "image/png"),
        ('multipart/related; type="image/png"', "image/png"),
        ("image/*", "image/jpeg"),
        ("image/webp", None),
    ],
)
def test_negotiate_rendered(accept: str | None, expected: str | None) -> None:
    ranges = media.parse_accept(accept)
    if expected is None:
        with pytest.raises(NoConversion):
            media.negotiate_rendered(ranges)
    else:
        assert media.negotiate_rendered(ranges) == expected


def test_every_pixel_syntax_has_one_media_type_and_parts_carry_it() -> None:
    seen: dict[str, str] = {}
    for mtype, syntaxes in media.PIXEL_MEDIA_TYPES.items():
        for ts in syntaxes:
            assert ts not in seen, ts
            seen[ts] = mtype
            assert media.frame_media_type(ts) == mtype
    assert media.frame_media_type(ELE) == "application/octet-stream"
    assert media.part_type("image/jpeg", JPEG_LL) == f"image/jpeg; transfer-syntax={JPEG_LL}"
