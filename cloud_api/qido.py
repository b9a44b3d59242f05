"""QIDO-RS on the cloud catalog: the shared parsing (`shared/dicomweb/qido.py`) -> a catalog
`Search` with the reader's sites. Pure.

The catalog answers a `Search` with the rules of `shared.matching` on its own schema
(`cloud_api/catalog/search.py`); the parameters, warnings and DICOM JSON are shared with the
edge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cloud_api.catalog import INSTANCE, SERIES, STUDY, Search
from cloud_api.catalog.search import MATCHABLE
from shared.dicomweb.qido import (
    FUZZY_WARNING,
    MAX_OFFSET,
    MORE_WARNING,
    QidoQuery,
    check_uids,
    parse,
    render,
)

__all__ = [
    "FUZZY_WARNING",
    "INSTANCE",
    "MAX_OFFSET",
    "MORE_WARNING",
    "SERIES",
    "STUDY",
    "Query",
    "check_uids",
    "parse_query",
    "render",
    "search_of",
]


@dataclass
class Query:
    """A parsed QIDO request: the catalog search and the warnings its answer carries."""

    search: Search
    warnings: list[str] = field(default_factory=list)


def search_of(q: QidoQuery, sites: Sequence[str] | None) -> Search:
    """The catalog search of a parsed QIDO query, within `sites` (None: every site)."""
    return Search(q.level, q.filters, q.limit, q.offset, sites)


def parse_query(
    level: str,
    params: Mapping[str, str] | Sequence[tuple[str, str]],
    path_uids: Mapping[str, str],
    max_results: int,
    sites: Sequence[str] | None,
) -> Query:
    """Validate the query string; path UIDs (`/studies/{s}/series`) become UID filters."""
    q = parse(level, params, path_uids, max_results, MATCHABLE)
    return Query(search_of(q, sites), list(q.warnings))
