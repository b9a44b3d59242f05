"""C-FIND identifier -> parameterised SQL on the index: the pure core of the query service.

No I/O here: `build()` turns a request identifier into one SELECT with bound parameters and
`row_values()` turns a result row back into DICOM values, so the whole matching model is
covered by table-driven tests without a network. The per-value rules (wildcards as GLOB with
an index range on the literal prefix, date/time ranges, UID lists, person names) are
`shared.matching`'s, shared with the cloud API's QIDO-RS; this module maps C-FIND keys onto
the edge index. Query never filters on lifecycle state (invariant 3: evicted instances stay
searchable).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared import matching
from shared.errors import BadRequest

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
PATIENT_ROOT = "patient"
STUDY_ROOT = "study"
MODEL_LEVELS = {PATIENT_ROOT: LEVELS, STUDY_ROOT: LEVELS[1:]}

# Matching kinds: str (single value / wildcard), pn (case-insensitive, on the upper-cased
# column), uid (list of UIDs), da/tm (ranges), int (single value), list (multi-valued, computed),
# const (returned, never matched).
_SUBQUERY_MODALITIES = (
    "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT modality AS m FROM series x "
    "WHERE x.study_id = st.id AND modality <> ''))"
)
_SUBQUERY_SOP_CLASSES = (
    "(SELECT group_concat(c, '\\') FROM (SELECT DISTINCT sop_class_uid AS c FROM instances x "
    "WHERE x.study_id = st.id))"
)
_PATIENT_SCOPE = "FROM studies p WHERE p.patient_id = st.patient_id"
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


ATTRS: dict[str, Attr] = {
    a.keyword: a
    for a in (
        Attr("PatientID", "PATIENT", "st.patient_id", "str"),
        Attr("IssuerOfPatientID", "PATIENT", "st.issuer_of_patient_id", "str"),
        Attr("PatientName", "PATIENT", "st.patient_name", "pn", match="st.patient_name_norm"),
        Attr("PatientBirthDate", "PATIENT", "st.patient_birth_date", "da"),
        Attr("PatientSex", "PATIENT", "st.patient_sex", "str"),
        Attr(
            "NumberOfPatientRelatedStudies",
            "PATIENT",
            f"(SELECT COUNT(*) {_PATIENT_SCOPE})",
            "int",
            patient_expr="COUNT(*)",
        ),
        Attr(
            "NumberOfPatientRelatedSeries",
            "PATIENT",
            f"(SELECT SUM(p.num_series) {_PATIENT_SCOPE})",
            "int",
            patient_expr="SUM(st.num_series)",
        ),
        Attr(
            "NumberOfPatientRelatedInstances",
            "PATIENT",
            f"(SELECT SUM(p.num_instances) {_PATIENT_SCOPE})",
            "int",
            patient_expr="SUM(st.num_instances)",
        ),
        Attr("StudyInstanceUID", "STUDY", "st.study_uid", "uid"),
        Attr("StudyDate", "STUDY", "st.study_date", "da"),
        Attr("StudyTime", "STUDY", "st.study_time", "tm"),
        Attr("AccessionNumber", "STUDY", "st.accession_number", "str"),
        Attr("StudyID", "STUDY", "st.study_id", "str"),
        Attr("StudyDescription", "STUDY", "st.study_description", "str"),
        Attr("ReferringPhysicianName", "STUDY", "st.referring_physician", "str"),
        Attr("NumberOfStudyRelatedSeries", "STUDY", "st.num_series", "int"),
        Attr("NumberOfStudyRelatedInstances", "STUDY", "st.num_instances", "int"),
        Attr("ModalitiesInStudy", "STUDY", _SUBQUERY_MODALITIES, "list"),
        Attr("SOPClassesInStudy", "STUDY", _SUBQUERY_SOP_CLASSES, "list"),
        Attr("SeriesInstanceUID", "SERIES", "se.series_uid", "uid"),
        Attr("Modality", "SERIES", "se.modality", "str"),
        Attr("SeriesNumber", "SERIES", "se.series_number", "int"),
        Attr("SeriesDescription", "SERIES", "se.series_description", "str"),
        Attr("BodyPartExamined", "SERIES", "se.body_part", "str"),
        Attr("SeriesDate", "SERIES", "se.series_date", "da"),
        Attr("SeriesTime", "SERIES", "se.series_time", "tm"),
        Attr("NumberOfSeriesRelatedInstances", "SERIES", "se.num_instances", "int"),
        Attr("SOPInstanceUID", "IMAGE", "i.sop_instance_uid", "uid"),
        Attr("SOPClassUID", "IMAGE", "i.sop_class_uid", "uid"),
        Attr("InstanceNumber", "IMAGE", "i.instance_number", "int"),
        Attr("Rows", "IMAGE", "i.rows", "int"),
        Attr("Columns", "IMAGE", "i.columns", "int"),
        Attr("NumberOfFrames", "IMAGE", "i.number_of_frames", "int"),
        Attr(
            "InstanceAvailability",
            "IMAGE",
            f"CASE WHEN i.state IN ({_NEARLINE}) THEN 'NEARLINE' "
            f"WHEN i.state = {_UNAVAILABLE} THEN 'UNAVAILABLE' ELSE 'ONLINE' END",
            "const",
        ),
    )
}
# Multi-valued study keys computed from lower levels: matched with EXISTS on that table.
_LIST_MATCH = {
    "ModalitiesInStudy": ("series", "x.modality"),
    "SOPClassesInStudy": ("instances", "x.sop_class_uid"),
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
    sql = f"SELECT {select} FROM {_FROM[level]}"
    if conds:
        sql += " WHERE " + " AND ".join(conds)
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
    local: list[Any] = []
    cond = _term(attr, raw, local)
    if cond:
        params.extend(local)
    return cond


def _term(attr: Attr, raw: Any, params: list[Any]) -> str:
    values = matching.split_values(raw)
    if not values or values == [""]:
        return ""  # universal matching
    col = attr.match or attr.expr
    if attr.kind == "const":
        return ""
    if attr.kind == "uid":
        return matching.one_of(col, values, params)
    if attr.kind == "int":
        return matching.one_of(col, [matching.integer(attr.keyword, v) for v in values], params)
    if attr.kind in ("da", "tm"):
        return matching.any_of(
            [matching.date_time(col, v, attr.kind, attr.keyword, params) for v in values]
        )
    if attr.kind == "list":
        table, col = _LIST_MATCH[attr.keyword]
        inner = matching.any_of([matching.string(col, v, params) for v in values])
        if not inner:
            return ""
        return f"EXISTS (SELECT 1 FROM {table} x WHERE x.study_id = st.id AND {inner})"
    if attr.kind == "pn":
        return matching.any_of(
            [matching.string(col, matching.person_name(v), params) for v in values]
        )
    return matching.any_of([matching.string(col, v, params) for v in values])


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
