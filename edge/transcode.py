"""Transfer-syntax conversion on retrieve: choose a plan, then convert one dataset.

`choose` is pure: from the stored transfer syntax and the syntaxes a peer accepted for the SOP
class it returns what to send, or raises `NoConversion` naming both sides. `convert` does the
work with pydicom's pixel backends (pylibjpeg, pylibjpeg-openjpeg, pyjpegls, pylibjpeg-rle).

We only ever *re-encode* losslessly (RLE, JPEG-LS lossless, JPEG 2000 lossless): a retrieve must
never degrade an image the archive holds, so lossy targets are refused even when an encoder
exists. Uncompressed targets are produced when the dataset is encoded for the wire
(edge/dimse/dataset.py re-encodes between Explicit/Implicit VR and deflates), so a plan to an
uncompressed syntax leaves the dataset in Explicit VR Little Endian. An object stored in
Explicit VR Big Endian gets its OW/OF/OL/OD/OV values byte-swapped here (pydicom re-encodes
numbers it decoded, but writes those byte strings as they are).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from shared.errors import NoConversion

# Uncompressed syntaxes we can send any decodable object in, best first.
UNCOMPRESSED_TARGETS: tuple[str, ...] = (
    str(ExplicitVRLittleEndian),
    str(ImplicitVRLittleEndian),
    str(DeflatedExplicitVRLittleEndian),
)
# Lossless compressed syntaxes we may re-encode into, best first.
LOSSLESS_ENCODE_TARGETS: tuple[str, ...] = (
    str(JPEGLSLossless),
    str(JPEG2000Lossless),
    str(RLELossless),
)


@dataclass(frozen=True)
class Plan:
    """What to send: `source` is the stored syntax, `target` the one to put on the wire."""

    source: str
    target: str

    @property
    def as_is(self) -> bool:
        return self.source == self.target


def ts_name(ts: str) -> str:
    """A readable name for logs (`JPEG Baseline (Process 1)`), or the UID itself."""
    try:
        name = UID(ts).name
    except Exception:  # pragma: no cover - UID() accepts any string
        return ts
    return name or ts


def is_uncompressed(ts: str) -> bool:
    uid = UID(ts)
    return uid.is_transfer_syntax and not uid.is_compressed


@functools.lru_cache(maxsize=64)
def can_decode(ts: str) -> bool:
    """Whether a stored object in `ts` can be turned into native pixel data here."""
    if not UID(ts).is_transfer_syntax:
        return False
    if is_uncompressed(ts):
        return True
    try:
        return bool(get_decoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError):
        return False


@functools.lru_cache(maxsize=64)
def can_encode(ts: str) -> bool:
    """Whether we are willing and able to produce `ts` (lossless encoders only)."""
    if ts in UNCOMPRESSED_TARGETS:
        return True
    if ts not in LOSSLESS_ENCODE_TARGETS:
        return False
    try:
        return bool(get_encoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError):
        return False


def choose(stored_ts: str, accepted: Iterable[str]) -> Plan:
    """The plan for one object; raises NoConversion when nothing the peer accepts can be made."""
    acc = [str(a) for a in accepted]
    if stored_ts in acc:
        return Plan(stored_ts, stored_ts)
    if acc and can_decode(stored_ts):
        for target in (*UNCOMPRESSED_TARGETS, *LOSSLESS_ENCODE_TARGETS):
            if target in acc and can_encode(target):
                return Plan(stored_ts, target)
    offered = ", ".join(ts_name(a) for a in acc) or "no presentation context for this SOP class"
    raise NoConversion(
        f"stored as {ts_name(stored_ts)}; the peer accepts {offered}; "
        f"no conversion available (decoder for the stored syntax: "
        f"{'yes' if can_decode(stored_ts) else 'no'})"
    )


def convert(ds: Dataset, plan: Plan) -> Dataset:
    """Convert a dataset read from the cache according to `plan`, in place; returns it.

    Raises NoConversion when the pixel backend fails on this particular object (a corrupt
    stream, an unsupported bit depth): the caller fails that one sub-operation only.
    """
    if plan.as_is:
        return ds
    try:
        if plan.source == ExplicitVRBigEndian:
            big_to_little(ds)
        if UID(plan.source).is_compressed and "PixelData" in ds:
            # -> Explicit VR Little Endian, native pixel data; same object, so the same UID
            ds.decompress(generate_instance_uid=False)
        elif UID(plan.source).is_compressed:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if UID(plan.target).is_compressed:
            ds.compress(UID(plan.target), generate_instance_uid=False)
        # Uncompressed targets: the wire encoder writes the accepted context's syntax
        # (Implicit VR, deflate) from this Explicit VR Little Endian dataset.
    except NoConversion:
        raise
    except Exception as exc:
        raise NoConversion(
            f"converting {ts_name(plan.source)} to {ts_name(plan.target)} failed: {exc}"
        ) from exc
    return ds


_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def big_to_little(ds: Dataset, depth: int = 0) -> None:
    """Make a dataset read as Explicit VR Big Endian writable as little endian, in place.

    Numbers pydicom decoded (US, SS, UL, FL, ...) are re-encoded in the target byte order by
    the writer; "other" binary values (OW pixel data, LUT data, overlays, OF/OL/OD/OV) stay
    byte strings, so their words are swapped here. OB and UN are bytes, nothing to swap.
    """
    if depth > 32:
        raise NoConversion("sequences nested too deep to convert")
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                big_to_little(item, depth + 1)
            continue
        width = _SWAP_WIDTH.get(elem.VR)
        value = elem.value
        if width and isinstance(value, bytes) and value:
            if len(value) % width:
                raise NoConversion(f"{elem.tag} ({elem.VR}) has {len(value)} bytes, not words")
            elem.value = np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}").tobytes()
    if depth == 0 and hasattr(ds, "file_meta"):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
