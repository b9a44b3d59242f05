"""The seam each side fills to serve DICOMweb: where rows and bytes come from.

The cloud supplies it over its catalog and the bucket; the edge (round two) over its index,
its cache (through `edge/locate.py`, recall and verified reads included) and its `Ingestor`.
Everything else of DICOMweb (negotiation, multipart, metadata, frames, rendering, STOW parsing
and responses) is shared. A source is built per request with the caller's scope applied inside
it: what is out of scope is simply not found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol


@dataclass(frozen=True)
class InstanceRef:
    """One instance a WADO URL names, as the source's catalog knows it."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    size: int  # bytes of the stored Part-10 object
    locator: str  # the source's own handle: an object key (cloud), a cache path (edge)
    sop_class_uid: str = ""


class StoredPart(Protocol):
    """The outcome of storing one STOW part (`failure` 0 when stored)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    failure: int


class DicomwebSource(Protocol):
    def search(self, level: str, params: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """QIDO-RS matches at `level` (study, series, instance) as DICOM JSON objects."""
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
        """Store one received part (a temp file) through the side's one acceptance path."""
        ...
