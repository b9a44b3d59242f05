"""QIDO-RS for both sides: query parameters -> a `QidoQuery`; result rows -> DICOM JSON. Pure.

Matching follows PS3.4 C.2.2.2 by the rules of `shared.matching` on the attributes of
`shared.attributes`; each side turns a `QidoQuery` into SQL on its own schema (the cloud
catalog's `Search`, the edge's C-FIND builder in `edge/query.py`). Names, descriptions and the
referring physician match case-insensitively on both sides (what a viewer's search box
expects: OHIF's description filter types `thorax`). `fuzzymatching=true` is answered with
literal matching and a `Warning: 299` header, as PS3.18 asks of a server without fuzzy
matching. `limit`/`offset` are 0-10^9 (else 400, never an overflow deep in a database).

Every attribute a side holds at a level is returned (the standard allows more than the
defaults), so `includefield` is accepted and needs no work.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag

from shared import attributes, matching
from shared.attributes import BY_KEYWORD, CODE, UID
from shared.errors import BadRequest
from shared.uids import is_valid_uid

STUDY, SERIES, INSTANCE = attributes.STUDY, attributes.SERIES, attributes.INSTANCE
QIDO_LEVELS = (STUDY, SERIES, INSTANCE)

_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
MAX_OFFSET = 10**9  # far beyond any catalog; keeps the value a database integer
_NUMBER = re.compile(r"[0-9]{1,12}")
FUZZY_WARNING = (
    '299 hpacs "The fuzzymatching parameter is not supported. '
    'Only literal matching has been performed."'
)
MORE_WARNING = '299 hpacs "There are additional results that can be requested"'

# The matching keys of each level: its own stored attributes and those of the levels above,
# plus the study's ModalitiesInStudy (a side may pass its own table to `parse`).
MATCHABLE: dict[str, frozenset[str]] = {
    STUDY: frozenset(
        a.keyword
        for a in attributes.REGISTRY
        if a.match
        and a.level in (attributes.PATIENT, STUDY)
        and (a.stored or a.multi)
        and a.keyword != "SOPClassesInStudy"
    ),
}
MATCHABLE[SERIES] = MATCHABLE[STUDY] | {
    a.keyword for a in attributes.stored_at("series") if a.match
}
MATCHABLE[INSTANCE] = MATCHABLE[SERIES] | {
    a.keyword for a in attributes.stored_at("instances") if a.match
}


@dataclass(frozen=True)
class QidoQuery:
    """A parsed QIDO request: level, matching keys (keyword -> its values, already split,
    universal ones dropped), paging, and the warnings its answer carries."""

    level: str
    filters: dict[str, list[str]]
    limit: int
    offset: int
    warnings: tuple[str, ...] = ()


def parse(
    level: str,
    params: Mapping[str, str] | Sequence[tuple[str, str]],
    path_uids: Mapping[str, str],
    max_results: int,
    matchable: Mapping[str, frozenset[str]] = MATCHABLE,
) -> QidoQuery:
    """Validate the query string; path UIDs (`/studies/{s}/series`) become UID filters."""
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    raw: dict[str, str] = {}
    limit, offset, warnings = max_results, 0, []
    for name, value in items:
        if name in ("limit", "offset"):
            n = _count(name, value)
            if name == "limit":
                limit = min(n, max_results) if n else max_results
            else:
                offset = n
            continue
        if name == "fuzzymatching":
            if value.lower() not in ("false", "") and FUZZY_WARNING not in warnings:
                warnings.append(FUZZY_WARNING)
            continue
        if name in _CONTROL:
            continue
        keyword = _keyword(name)
        if keyword not in BY_KEYWORD or not BY_KEYWORD[keyword].match:
            raise BadRequest(f"unsupported query attribute {name[:64]!r}")
        if keyword not in matchable[level]:
            raise BadRequest(f"{keyword} cannot be matched at the {level.lower()} level")
        raw[keyword] = raw[keyword] + "\\" + value if keyword in raw else value  # repeated: OR
    for keyword, uid in path_uids.items():
        if not is_valid_uid(uid):
            raise BadRequest(f"{keyword} in the path is not a valid UID")
        raw[keyword] = uid
    filters = {}
    for keyword, value in raw.items():
        values = matching.split_values(value, commas=BY_KEYWORD[keyword].kind in (UID, CODE))
        if not matching.is_universal(values):
            filters[keyword] = values
    return QidoQuery(level, filters, limit, offset, tuple(warnings))


def _count(name: str, value: str) -> int:
    if not _NUMBER.fullmatch(value.strip()):
        raise BadRequest(f"{name} must be an integer from 0 to {MAX_OFFSET}")
    n = int(value)
    if n > MAX_OFFSET:
        raise BadRequest(f"{name} must be an integer from 0 to {MAX_OFFSET}")
    return n


def _keyword(name: str) -> str:
    """A keyword or an 8-digit hex tag, as QIDO allows both."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        kw = keyword_for_tag(int(name, 16))
        return kw or name
    return name


def check_uids(*uids: str) -> None:
    """UIDs of a WADO path (BadRequest for a malformed one)."""
    matching.uids(list(uids), validate=True)


# ---- DICOM JSON -------------------------------------------------------------------------------


_INTS = frozenset({"IS", "US", "UL", "SL", "SS"})


def _maker(vr: str) -> Callable[[Any], dict[str, Any]]:
    """The DICOM JSON element builder of one VR (PS3.18 F.2; empty values carry only the VR)."""
    empty = {"vr": vr}

    def pn(v: Any) -> dict[str, Any]:
        if v is None or v == "":
            return dict(empty)
        return {"vr": vr, "Value": [{"Alphabetic": x} for x in str(v).split("\\")]}

    def integer(v: Any) -> dict[str, Any]:
        return dict(empty) if v is None or v == "" else {"vr": vr, "Value": [int(v)]}

    def code(v: Any) -> dict[str, Any]:
        if v is None or v == "" or v == []:
            return dict(empty)
        return {"vr": vr, "Value": v if isinstance(v, list) else str(v).split("\\")}

    def text(v: Any) -> dict[str, Any]:
        if v is None or v == "" or v == []:
            return dict(empty)
        return {"vr": vr, "Value": v if isinstance(v, list) else [str(v)]}

    return pn if vr == "PN" else integer if vr in _INTS else code if vr == "CS" else text


_MAKERS = {a.keyword: (f"{a.tag:08X}", _maker(a.vr)) for a in BY_KEYWORD.values()}


@functools.lru_cache(maxsize=16)
def _plan(keywords: tuple[str, ...]) -> tuple[tuple[str, str, Callable[[Any], Any]], ...]:
    """For the columns a search returns (always the same per level): their elements in tag
    order, computed once."""
    known = [(tag, kw, make) for kw in keywords if kw in _MAKERS for tag, make in [_MAKERS[kw]]]
    return tuple((kw, tag, make) for tag, kw, make in sorted(known))


def render(level: str, row: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """A result row ({keyword: value}) as a DICOM JSON dataset, with RetrieveURL at its level."""
    out: dict[str, Any] = {}
    for kw, tag, make in _plan(tuple(row)):
        value = row[kw]
        if kw == "SpecificCharacterSet" and not value:
            continue
        out[tag] = make(value)
    url = f"{base_url}/studies/{row['StudyInstanceUID']}"
    if level != STUDY:
        url += f"/series/{row['SeriesInstanceUID']}"
    if level == INSTANCE:
        url += f"/instances/{row['SOPInstanceUID']}"
    out["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(out.items()))
