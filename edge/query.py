"""C-FIND identifier -> parameterised SQL on the index: the pure core of the query service.

No I/O here: `build()` turns a request identifier into one SELECT with bound parameters and
`row_values()` turns a result row back into DICOM values, so the whole matching model is
covered by table-driven tests without a network. The per-value rules (wildcards as GLOB with
an index range on the literal prefix, date/time ranges, UID lists, person names) are
`shared.matching`'s, shared with the cloud API's QIDO-RS; this module maps C-FIND keys onto
the edge index. Query never filters on where the bytes are (invariant 3: evicted instances
stay searchable); deleted instances (shared.lifecycle.HIDDEN_STATES) are hidden at every level:
studies and series by their counters (which count visible instances only), instances by state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared import attributes, matching
from shared.errors import BadRequest
from shared.index import NORMALISED
from shared.lifecycle import HIDDEN_SQL
from shared.sqldialect import SQLITE

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
PATIENT_ROOT = "patient"
STUDY_ROOT = "study"
MODEL_LEVELS = {PATIENT_ROOT: LEVELS, STUDY_ROOT: LEVELS[1:]}

# Matching kinds: str (single value / wildcard), pn (case-insensitive, on the upper-cased
# column), uid (list of UIDs), da/tm (ranges), int (single value), list (multi-valued, computed),
# const (returned, never matched). The computed counters keep their kind (int, for row_values)
# but are return keys only (PS3.4 C.3.4): a value sent in one never filters.
_VISIBLE_SERIES = "x.num_instances > 0"  # series and studies count visible instances only
_VISIBLE_INSTANCE = f"x.state NOT IN ({HIDDEN_SQL})"
_SUBQUERY_MODALITIES = (
    "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT modality AS m FROM series x "
    f"WHERE x.study_id = st.id AND modality <> '' AND {_VISIBLE_SERIES}))"
)
_SUBQUERY_SOP_CLASSES = (
    "(SELECT group_concat(c, '\\') FROM (SELECT DISTINCT sop_class_uid AS c FROM instances x "
    f"WHERE x.study_id = st.id AND {_VISIBLE_INSTANCE}))"
)
_PATIENT_SCOPE = "FROM studies p WHERE p.patient_id = st.patient_id AND p.num_instances > 0"
_NEARLINE = "'evicted', 'recalling'"
_UNAVAILABLE = "'lost'"  # no intact copy anywhere (shared.lifecycle State.LOST)


@dataclass(frozen=True)
class Attr:
    keyword: str
    level: str
    expr: str  # SQL expression returned
    kind: str
    match: str = ""  # SQL expression matched, when it differs from expr
    patient_expr: str = ""  # expression at PATIENT level (aggregated over the patient's studies)
    returned_only: bool = False  # a return key: any value sent in it is ignored


_ALIAS = {"studies": "st", "series": "se", "instances": "i"}
_KIND = {
    attributes.UID: "uid",
    attributes.TEXT: "str",
    attributes.CODE: "str",
    attributes.PN: "pn",
    attributes.DATE: "da",
    attributes.TIME: "tm",
    attributes.INT: "int",
}
# Computed keys: counters in the rows or small correlated subqueries on indexed columns.
_COMPUTED: dict[str, tuple[str, str]] = {
    "NumberOfPatientRelatedStudies": (f"(SELECT COUNT(*) {_PATIENT_SCOPE})", "COUNT(*)"),
    "NumberOfPatientRelatedSeries": (
        f"(SELECT SUM(p.num_series) {_PATIENT_SCOPE})",
        "SUM(st.num_series)",
    ),
    "NumberOfPatientRelatedInstances": (
        f"(SELECT SUM(p.num_instances) {_PATIENT_SCOPE})",
        "SUM(st.num_instances)",
    ),
    "NumberOfStudyRelatedSeries": ("st.num_series", ""),
    "NumberOfStudyRelatedInstances": ("st.num_instances", ""),
    "ModalitiesInStudy": (_SUBQUERY_MODALITIES, ""),
    "SOPClassesInStudy": (_SUBQUERY_SOP_CLASSES, ""),
    "NumberOfSeriesRelatedInstances": ("se.num_instances", ""),
    "InstanceAvailability": (
        f"CASE WHEN i.state IN ({_NEARLINE}) THEN 'NEARLINE' "
        f"WHEN i.state = {_UNAVAILABLE} THEN 'UNAVAILABLE' ELSE 'ONLINE' END",
        "",
    ),
}


def _edge_attr(a: attributes.Attribute) -> Attr:
    """The registry's attribute on the edge schema."""
    level = "IMAGE" if a.level == attributes.INSTANCE else a.level
    if a.stored:
        col = f"{_ALIAS[a.table]}.{a.column}"
        # only names have an upper-cased copy in the edge index (shared.index.NORMALISED):
        # ReferringPhysicianName and the descriptions match case-sensitively (PS3.4's default)
        norm = f"{_ALIAS[a.table]}.{a.norm_column}" if a.keyword in NORMALISED else ""
        return Attr(a.keyword, level, col, _KIND[a.kind], match=norm)
    expr, patient_expr = _COMPUTED[a.keyword]
    kind = "list" if a.multi else ("const" if not a.match else _KIND[a.kind])
    return Attr(a.keyword, level, expr, kind, patient_expr=patient_expr, returned_only=not a.multi)


# SpecificCharacterSet is answered per response (needs_unicode), never matched or selected.
ATTRS: dict[str, Attr] = {
    a.keyword: _edge_attr(a) for a in attributes.REGISTRY if a.keyword != "SpecificCharacterSet"
}
# Multi-valued study keys computed from lower levels: matched with EXISTS on that table.
_LIST_MATCH = {
    "ModalitiesInStudy": ("series", "x.modality", _VISIBLE_SERIES),
    "SOPClassesInStudy": ("instances", "x.sop_class_uid", _VISIBLE_INSTANCE),
}
UNIQUE_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_FROM = {
    "PATIENT": "studies st",
    "STUDY": "studies st",
    "SERIES": "series se JOIN studies st ON st.id = se.study_id",
    "IMAGE": "instances i JOIN series se ON se.id = i.series_id "
    "JOIN studies st ON st.id = i.study_id",
}
# Deleted instances, and studies and series with no visible instance left, are not matched.
VISIBLE = {
    "PATIENT": "st.num_instances > 0",
    "STUDY": "st.num_instances > 0",
    "SERIES": "se.num_instances > 0",
    "IMAGE": f"i.state NOT IN ({HIDDEN_SQL})",
}


@dataclass(frozen=True)
class Query:
    """One C-FIND translated: SQL, its parameters, and the keywords its columns fill."""

    level: str
    sql: str
    params: tuple[Any, ...]
    keywords: tuple[str, ...]  # column i of a result row fills keywords[i]
    unsupported: tuple[str, ...] = field(default=())  # requested keys returned empty


def build(identifier: Mapping[str, Any], model: str, limit: int | None = None) -> Query:
    """Translate an identifier (keyword -> value as pydicom gives it) into one SELECT.

    `limit` caps the rows fetched; callers pass max_results + 1 to detect truncation.
    Raises BadRequest for an identifier the model cannot answer (0xA900 on the wire).
    """
    level = _text(identifier.get("QueryRetrieveLevel", "")).upper()
    if level not in MODEL_LEVELS.get(model, ()):
        raise BadRequest(f"QueryRetrieveLevel {level!r} is not valid for the {model} root model")
    allowed = LEVELS[: LEVELS.index(level) + 1]
    keywords: list[str] = []
    unsupported: list[str] = []
    conds: list[str] = []
    params: list[Any] = []
    for keyword, raw in identifier.items():
        if keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        attr = ATTRS.get(keyword)
        if attr is None or attr.level not in allowed:
            unsupported.append(keyword)
            continue
        if keyword not in keywords:
            keywords.append(keyword)
        cond = _condition(attr, raw, params)
        if cond:
            conds.append(cond)
    unique = UNIQUE_KEY[level]
    if unique not in keywords:
        keywords.insert(0, unique)
    select = ", ".join(_select_expr(ATTRS[k], level) for k in keywords)
    sql = f"SELECT {select} FROM {_FROM[level]} WHERE " + " AND ".join([*conds, VISIBLE[level]])
    if level == "PATIENT":
        sql += " GROUP BY st.patient_id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return Query(level, sql, tuple(params), tuple(keywords), tuple(unsupported))


def _select_expr(attr: Attr, level: str) -> str:
    if level == "PATIENT":
        return attr.patient_expr or f"MAX({attr.expr})"
    return attr.expr


def _condition(attr: Attr, raw: Any, params: list[Any]) -> str:
    """The WHERE term for one key; its parameters are appended only when a term results."""
    return SQLITE.render(_term(attr, raw), params)


def _term(attr: Attr, raw: Any) -> matching.Predicate | None:
    values = matching.split_values(raw)
    if not values or values == [""]:
        return None  # universal matching
    if attr.kind == "const" or attr.returned_only:
        return None
    col = attr.match or attr.expr
    if attr.kind == "uid":
        return matching.one_of(col, values)
    if attr.kind == "int":
        return matching.one_of(col, [matching.integer(attr.keyword, v) for v in values])
    if attr.kind in ("da", "tm"):
        return matching.any_of(
            [matching.date_time(col, v, attr.kind, attr.keyword) for v in values]
        )
    if attr.kind == "list":
        table, col, visible = _LIST_MATCH[attr.keyword]
        inner = matching.any_of([matching.string(col, v) for v in values])
        if inner is None:
            return None
        return matching.Exists(f"{table} x", f"x.study_id = st.id AND {visible}", inner)
    if attr.kind == "pn" and attr.match:  # an upper-cased copy: case-insensitive
        return matching.any_of([matching.string(col, matching.person_name(v)) for v in values])
    return matching.any_of([matching.string(col, v) for v in values])


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(value).strip()


def row_values(query: Query, row: Sequence[Any]) -> dict[str, Any]:
    """DICOM values for one result row: strings, ints (None for unknown), lists for lists."""
    out: dict[str, Any] = {}
    for keyword, value in zip(query.keywords, row, strict=True):
        kind = ATTRS[keyword].kind
        if kind == "list":
            out[keyword] = [v for v in (value or "").split("\\") if v]
        elif kind == "int":
            out[keyword] = None if value is None or value == "" else int(value)
        else:
            out[keyword] = "" if value is None else str(value)
    return out


def needs_unicode(values: Iterable[Any]) -> bool:
    """Whether a response must declare ISO_IR 192: any returned string is non-ASCII."""
    for v in values:
        items = v if isinstance(v, list) else [v]
        for item in items:
            if isinstance(item, str) and not item.isascii():
                return True
    return False
