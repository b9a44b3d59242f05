"""An edge with a move destination and its sync side on one index, for tests that damage cache
files (issue 12): flip a byte at rest, then retrieve, upload or scrub."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.server import EdgeServer
from tests.support.dcmtk import running_storescp
from tests.support.edge import DCMTK_AETS, edge_config, running_edge
from tests.support.net import free_port
from tests.support.retrieve import dataset_bytes
from tests.support.sync import Site, sync_config

PERMISSIONS = ["echo", "store", "find", "move", "get", "commit"]


@dataclass
class Rig:
    server: EdgeServer
    site: Site
    dest_port: int
    data: dict[str, Any]

    def rows(self, study_uid: str) -> list[Any]:
        return list(
            self.site.db.reader().execute(
                "SELECT i.* FROM instances i JOIN studies s ON s.id = i.study_id "
                "WHERE s.study_uid = ? ORDER BY i.id",
                (study_uid,),
            )
        )

    def row(self, sop_instance_uid: str) -> Any:
        return (
            self.site.db.reader()
            .execute("SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
            .fetchone()
        )

    def cache_file(self, row: Any) -> Path:
        return self.site.cache.root / row["path"]

    def quarantined(self) -> list[Path]:
        q = self.site.cache.root / "quarantine"
        return sorted(q.glob("*.dcm")) if q.is_dir() else []

    def events(self, kind: str = "cache_damaged") -> list[str]:
        return [
            r[0]
            for r in self.site.db.reader().execute(
                "SELECT detail FROM events WHERE kind = ? ORDER BY id", (kind,)
            )
        ]


@contextmanager
def rig(tmp_path: Path, store_url: str, **sync: Any) -> Iterator[Rig]:
    """A running edge (DCMTK AEs registered, STORESCP as move destination) and a Site on the
    same index and cache, with a sync config for `store_url`."""
    dest_port = free_port()
    nodes: list[dict[str, Any]] = [
        {"ae_title": a, "host": "127.0.0.1", "port": 104, "permissions": PERMISSIONS}
        for a in DCMTK_AETS
    ]
    nodes.append(
        {"ae_title": "STORESCP", "host": "127.0.0.1", "port": dest_port, "permissions": ["store"]}
    )
    data: dict[str, Any] = edge_config(tmp_path, nodes=nodes)
    data["sync"] = sync_config(tmp_path, store_url, **sync)["sync"]
    with running_edge(data) as server:
        s = Site(tmp_path, data)
        try:
            yield Rig(server, s, dest_port, data)
        finally:
            s.close()


@contextmanager
def destination(port: int, out: Path) -> Iterator[None]:
    """DCMTK storescp as STORESCP on `port`, writing into `out`."""
    with running_storescp(port, out):
        yield


def flip_byte(path: Path, from_end: int = 100) -> bytes:
    """Damage a file at rest: one byte of its pixel data inverted. Returns the damaged bytes."""
    data = bytearray(path.read_bytes())
    data[len(data) - from_end] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def dataset_of(raw: bytes, tmp: Path) -> bytes:
    """The dataset bytes (after the file meta) of a Part-10 file given as bytes."""
    tmp.write_bytes(raw)
    return dataset_bytes(tmp)


def messages(caplog: pytest.LogCaptureFixture, level: int, needle: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == level and needle in r.getMessage()
    ]


__all__ = ["Rig", "dataset_of", "destination", "flip_byte", "messages", "rig"]
