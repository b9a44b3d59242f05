"""STOW-RS (PS3.18 10.5): request bodies spooled part by part; the status and the DICOM JSON
response body from the parts' outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from shared.dicomweb import multipart
from shared.dicomweb.source import StoredPart
from shared.errors import PayloadTooLarge


def status(outcomes: Sequence[StoredPart]) -> int:
    """200 all stored, 202 some failed, 409 none stored (PS3.18 Table 10.5.3-1)."""
    stored = sum(1 for o in outcomes if not o.failure)
    if stored and stored == len(outcomes):
        return 200
    return 202 if stored else 409


def response_json(base: str, outcomes: Sequence[StoredPart], study: str | None) -> dict[str, Any]:
    """The Store Instances Response Module; URLs start with `base` (the public DICOMweb root)."""

    def ui(v: str) -> dict[str, Any]:
        return {"vr": "UI", "Value": [v]} if v else {"vr": "UI"}

    ok, failed = [], []
    for o in outcomes:
        item = {"00081150": ui(o.sop_class_uid), "00081155": ui(o.sop_instance_uid)}
        if not o.failure:
            url = f"{base}/studies/{o.study_uid}/series/{o.series_uid}/instances/"
            item["00081190"] = {"vr": "UR", "Value": [url + o.sop_instance_uid]}
            ok.append(item)
        else:
            item["00081197"] = {"vr": "US", "Value": [o.failure]}
            failed.append(item)
    body: dict[str, Any] = {}
    study_uid = study or next((o.study_uid for o in outcomes if not o.failure), "")
    if study_uid:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study_uid}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if ok:
        body["00081199"] = {"vr": "SQ", "Value": ok}
    return body


async def spooled_parts(
    chunks: AsyncIterable[bytes],
    boundary: str,
    spool: Path,
    *,
    max_body_bytes: int = 0,
    max_part_bytes: int = 0,
    limit_name: str = "the body limit",
) -> AsyncIterator[Path]:
    """Each complete part of a multipart/related body as a file in `spool`, as soon as it has
    arrived (the shared streaming reader: any boundary a peer sends, malformed bodies are 400).
    Limits (0: none) are checked while reading, before a byte more is written."""
    parser = multipart.MultipartParser(boundary)
    received, part_bytes, n = 0, 0, 0
    fh: BinaryIO | None = None
    path = spool / "0.dcm"
    done: list[Path] = []

    def apply(events: list[multipart.Event]) -> None:
        nonlocal fh, path, n, part_bytes
        for ev in events:
            if isinstance(ev, multipart.PartStart):
                n += 1
                path = spool / f"{n}.dcm"
                fh = path.open("wb")
                part_bytes = 0
            elif isinstance(ev, multipart.PartEnd):
                assert fh is not None
                fh.close()
                fh = None
                done.append(path)
            else:
                assert fh is not None
                part_bytes += len(ev)
                if max_part_bytes and part_bytes > max_part_bytes:
                    raise PayloadTooLarge(f"a part is larger than {limit_name} ({max_part_bytes})")
                fh.write(ev)

    try:
        async for chunk in chunks:
            received += len(chunk)
            if max_body_bytes and received > max_body_bytes:
                raise PayloadTooLarge(f"request body over {limit_name} ({max_body_bytes})")
            await asyncio.to_thread(apply, parser.feed(chunk))
            while done:
                yield done.pop(0)
        await asyncio.to_thread(apply, parser.finish())
        while done:
            yield done.pop(0)
    finally:
        if fh is not None:
            fh.close()
