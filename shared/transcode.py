"""Transfer-syntax conversion on retrieve: choose a plan, then convert one dataset.

Used by the edge's DIMSE senders (C-MOVE, C-GET, routing) and by WADO-RS on both sides
(`shared.dicomweb`), so one set of rules decides what hpacs may produce. `choose` is pure: from
the stored transfer syntax and the syntaxes a peer accepted for the SOP class it returns what
to send, or raises `NoConversion` naming both sides. `convert` does the work with pydicom's
pixel backends (pylibjpeg, pylibjpeg-openjpeg, pyjpegls, pylibjpeg-rle).

We only ever *re-encode* losslessly (RLE, JPEG-LS lossless, JPEG 2000 lossless): a retrieve must
never degrade an image the archive holds, so lossy targets are refused even when an encoder
exists. Uncompressed targets are produced by pynetdicom itself from an uncompressed dataset
(it re-encodes between Explicit/Implicit VR and deflates), so a plan to an uncompressed syntax
leaves the dataset in Explicit VR Little Endian; `encode` writes that dataset as Part-10 bytes in
any uncompressed target (DICOMweb has no pynetdicom to do it).
"""

from __future__ import annotations

import functools
import io
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
        if UID(plan.target).is_compressed and "PixelData" in ds:
            ds.compress(UID(plan.target), generate_instance_uid=False)
        elif UID(plan.target).is_compressed:  # no pixel data (an SR, say): only the label
            ds.file_meta.TransferSyntaxUID = UID(plan.target)
        # Uncompressed targets: the sender's encoder (edge/dimse/dataset.py, or `encode` here)
        # writes the accepted syntax (Implicit VR, deflate) from this Explicit VR LE dataset.
    except NoConversion:
        raise
    except Exception as exc:
        raise NoConversion(
            f"converting {ts_name(plan.source)} to {ts_name(plan.target)} failed: {exc}"
        ) from exc
    return ds


def encode(ds: Dataset, target: str) -> bytes:
    """Part-10 bytes of a dataset (converted by `convert` for a plan to `target`) in `target`.

    pydicom re-encodes between the uncompressed syntaxes (Implicit/Explicit VR, deflate) when
    the file meta names another one than the dataset was read in.
    """
    try:
        ds.file_meta.TransferSyntaxUID = UID(target)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    except Exception as exc:
        raise NoConversion(f"writing the object as {ts_name(target)} failed: {exc}") from exc
    return buf.getvalue()


_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def big_to_little(ds: Dataset, depth: int = 0) -> None:
    """Make a dataset read as Explicit VR Big Endian writable as little endian, in place.

    Numbers pydicom decoded (US, SS, UL, FL, ...) are re-encoded in the target byte order by the
    writer; "other" binary values (OW pixel data, LUT data, overlays, OF/OL/OD/OV) stay byte
    strings that the writer copies as they are, so their words are swapped here. OB and UN are
    bytes, nothing to swap.
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
