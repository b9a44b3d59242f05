"""The cloud API's catalog: a `Catalog` Protocol with two backends under one contract suite.

- `SqliteCatalog` (`sqlite.py`): a file per replica under `cloud.data_dir`, the embedded default.
- `PostgresCatalog` (`postgres.py`): one database shared by stateless replicas; one replica at
  a time applies journal objects (an advisory lock), every replica serves.

Both are derived only from `catalog/<site>/` journal objects (`poller.py` lists and decodes
them, the same for both), apply them with the same statements (`apply.py`) and answer searches
with the same SQL (`search.py`) rendered in their dialect. Handlers never run SQL: they call
these methods, from worker threads (every method is synchronous).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

STUDY, SERIES, INSTANCE = "STUDY", "SERIES", "INSTANCE"


@dataclass(frozen=True)
class Search:
    """One search: level, matching keys (keyword -> its values, already split), paging and the
    sites in the reader's scope (None: every site)."""

    level: str
    filters: dict[str, list[str]] = field(default_factory=dict)
    limit: int = 100
    offset: int = 0
    sites: Sequence[str] | None = None


@dataclass(frozen=True)
class InstanceRef:
    """Where one instance's bytes are (the copy of the first site in the reader's scope)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax: str
    object_key: str
    size: int
    crc32c: str


@dataclass
class PollResult:
    objects: int = 0
    rows: int = 0
    seconds: float = 0.0
    applied: bool = True  # False: another replica applies (PostgreSQL), nothing was done here


@dataclass(frozen=True)
class SiteCount:
    site: str
    studies: int
    instances: int


class Catalog(Protocol):
    url: str

    def search(self, q: Search) -> list[dict[str, Any]]:
        """Matching rows of `q.level` as {keyword: value} (lists for multi-valued keys), in a
        stable order, at most `q.limit` from `q.offset`; counts over the sites in scope."""
        ...

    def instances(
        self,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        sites: Sequence[str] | None = None,
    ) -> list[InstanceRef]:
        """The in-scope instances of a study/series/instance, each once, in series/instance
        order ([] when there are none)."""
        ...

    def apply(self, site: str, rows: list[dict[str, Any]], key: str | None = None) -> int:
        """Apply one journal object's rows (`CatalogRow.to_json()` dicts) atomically and
        idempotently; with `key`, move the site's cursor there in the same transaction.
        Returns the rows applied (0 when `key` was already applied)."""
        ...

    def try_lead(self) -> bool:
        """Whether this replica applies journal objects now (always, for a SQLite file)."""
        ...

    def cursors(self) -> dict[str, str]:
        """Per site, the last journal key applied."""
        ...

    def reset(self) -> None:
        """Empty every table and cursor in one transaction (`hpacs-cloud catalog rebuild`)."""
        ...

    def site_counts(self) -> list[SiteCount]: ...

    def counts(self) -> dict[str, int]:
        """Rows per table (studies, series, instances): for tests, rebuild reports, benches."""
        ...

    def check_ready(self) -> None:
        """Raise unless the catalog can answer and be written (the readiness probe)."""
        ...

    def close(self) -> None: ...


def open_catalog(url: str, data_dir: str | Path, pool_size: int = 8) -> Catalog:
    """`postgresql://...` or `postgres://...`: the shared database; anything else (the default
    "", or `sqlite:///path`): a SQLite file, by default `<data_dir>/catalog.sqlite`."""
    if url.startswith(("postgresql://", "postgres://")):
        from cloud_api.catalog.postgres import PostgresCatalog

        return PostgresCatalog(url, pool_size=pool_size)
    from cloud_api.catalog.sqlite import SqliteCatalog

    path = url.removeprefix("sqlite://") if url.startswith("sqlite://") else ""
    return SqliteCatalog(Path(path) if path else Path(data_dir) / "catalog.sqlite")
