"""Catalog journal rows: what the sync agent appends and the cloud API and restores read.

One JSON object per line, gzip-compressed objects under `catalog/<site>/`. A row carries every
indexed attribute (`shared.dicom.Header`) plus where the bytes are and how to verify them,
so an index can be rebuilt without opening a DICOM file.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, fields
from typing import Any

from shared.dicom import Header

CATALOG_VERSION = 1
_HEADER_FIELDS = {f.name for f in fields(Header)}


@dataclass(frozen=True)
class CatalogRow:
    header: Header
    size: int
    crc32c: str  # hex
    object_key: str
    site: str
    received_at: float
    calling_ae: str = ""
    source: str = ""
    deleted: bool = False  # a later row can retract an instance (a deletion's tombstone)
    # a tombstone of a purge: the bytes are gone (a restore skips the instance); without it,
    # a tombstone of a deletion within its grace (a restore brings it back deleted, undeletable)
    purged: bool = False
    deleted_at: float = 0.0  # when it was deleted: the grace runs on after a restore

    def to_json(self) -> dict[str, Any]:
        d = self.header.as_dict()
        d.update(
            v=CATALOG_VERSION,
            size=self.size,
            crc32c=self.crc32c,
            object_key=self.object_key,
            site=self.site,
            received_at=self.received_at,
            calling_ae=self.calling_ae,
            source=self.source,
        )
        if self.deleted:
            d["deleted"] = True
            d["deleted_at"] = self.deleted_at
        if self.purged:
            d["purged"] = True
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CatalogRow:
        header = Header(**{k: v for k, v in d.items() if k in _HEADER_FIELDS})
        return cls(
            header=header,
            size=int(d["size"]),
            crc32c=str(d["crc32c"]),
            object_key=str(d["object_key"]),
            site=str(d["site"]),
            received_at=float(d["received_at"]),
            calling_ae=str(d.get("calling_ae", "")),
            source=str(d.get("source", "")),
            deleted=bool(d.get("deleted", False)),
            purged=bool(d.get("purged", False)),
            deleted_at=float(d.get("deleted_at", 0.0)),
        )


def encode_batch(rows: list[CatalogRow]) -> bytes:
    """A gzip'd JSON-lines object; mtime fixed so equal batches give equal bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for r in rows:
            gz.write(json.dumps(r.to_json(), ensure_ascii=False, separators=(",", ":")).encode())
            gz.write(b"\n")
    return buf.getvalue()


def decode_batch(data: bytes) -> list[CatalogRow]:
    text = gzip.decompress(data).decode("utf-8")
    return [CatalogRow.from_json(json.loads(line)) for line in text.splitlines() if line]
