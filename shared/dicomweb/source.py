"""The seam each side fills to serve DICOMweb: where rows and bytes come from.

The cloud supplies it over its catalog and the bucket (`cloud_api/handlers.py`); the edge over
its index (the C-FIND builder of `edge/query.py`), its cache (through `edge/locate.py`: verified
reads, quarantine and repair, read-through recall) and its `Ingestor` (`edge/dicomweb.py`).
Everything else of DICOMweb (routes, negotiation, multipart, metadata, frames, rendering, STOW
parsing and responses) is shared. A source is built per request with the caller's scope
applied inside it: what is out of scope is simply not found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from shared.dicomweb.qido import QidoQuery


@dataclass(frozen=True)
class InstanceRef:
    """One instance a WADO URL names, as the source's index knows it."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    size: int  # bytes of the stored Part-10 object
    locator: str  # the source's own handle: an object key (cloud), a cache path (edge)
    sop_class_uid: str = ""
    crc32c: str = ""  # of the stored bytes: with the UID, the key of cached metadata
    handle: Any = field(default=None, compare=False)  # the source's own row, if it keeps one

    @property
    def version(self) -> tuple[str, str]:
        """What identifies these exact bytes (metadata caches key on it)."""
        return (self.sop_instance_uid, self.crc32c or f"{self.locator}:{self.size}")


class StoredPart(Protocol):
    """The outcome of storing one STOW part (`failure` 0 when stored)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    failure: int


class DicomwebSource(Protocol):
    def search(self, query: QidoQuery) -> list[dict[str, Any]]:
        """QIDO-RS matches at `query.level` as {keyword: value} rows (lists for multi-valued
        keys), in a stable order, at most `query.limit` from `query.offset`."""
        ...

    def instances(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[InstanceRef]:
        """In-scope instances in series/instance order; NotFound when there are none."""
        ...

    def open(self, ref: InstanceRef, start: int = 0, length: int | None = None) -> BinaryIO:
        """The stored bytes (a range of them), verified by the source's own rules."""
        ...

    def store(self, path: Path, study_uid: str | None) -> StoredPart:
        """Store one received part (a temp file the caller removes) through the side's one
        acceptance path; failures are in the outcome."""
        ...

    def stored(self, parts: Sequence[StoredPart]) -> str:
        """After the last part of a STOW request: make what was stored visible where that is a
        separate step (the cloud's catalog object); returns the request's audit detail."""
        ...
