"""QIDO-RS: query parameters -> parameterised SQL on the catalog index -> DICOM JSON. Pure.

Matching follows PS3.4 C.2.2.2 by the same rules as the edge's C-FIND: the per-value rules
(single value, `*`/`?` wildcards via GLOB with `[` escaped plus an index range on the literal
prefix, UID lists, date/time ranges, universal match for empty values, person names
case-insensitive) are `shared.matching`'s; this module maps QIDO attributes onto the cloud
index schema, which differs from the edge's.

Every attribute the index holds at a level is returned (the standard allows more than the
defaults), so `includefield` is accepted and needs no work; unknown fields are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from shared import matching
from shared.errors import BadRequest
from shared.uids import is_valid_uid

STUDY, SERIES, INSTANCE = "STUDY", "SERIES", "INSTANCE"

# keyword -> (level, SQL column, kind). kind: uid | text | pn | date | time | int | modalities
ATTRIBUTES: dict[str, tuple[str, str, str]] = {
    "StudyInstanceUID": (STUDY, "st.study_uid", "uid"),
    "PatientID": (STUDY, "st.patient_id", "text"),
    "IssuerOfPatientID": (STUDY, "st.issuer_of_patient_id", "text"),
    "PatientName": (STUDY, "st.patient_name_norm", "pn"),
    "PatientBirthDate": (STUDY, "st.patient_birth_date", "date"),
    "PatientSex": (STUDY, "st.patient_sex", "text"),
    "StudyDate": (STUDY, "st.study_date", "date"),
    "StudyTime": (STUDY, "st.study_time", "time"),
    "AccessionNumber": (STUDY, "st.accession_number", "text"),
    "StudyID": (STUDY, "st.study_id", "text"),
    "StudyDescription": (STUDY, "st.study_description", "text"),
    "ReferringPhysicianName": (STUDY, "st.referring_physician", "text"),
    "ModalitiesInStudy": (STUDY, "", "modalities"),
    "SeriesInstanceUID": (SERIES, "se.series_uid", "uid"),
    "Modality": (SERIES, "se.modality", "text"),
    "SeriesNumber": (SERIES, "se.series_number", "int"),
    "SeriesDescription": (SERIES, "se.series_description", "text"),
    "BodyPartExamined": (SERIES, "se.body_part", "text"),
    "SeriesDate": (SERIES, "se.series_date", "date"),
    "SeriesTime": (SERIES, "se.series_time", "time"),
    "SOPInstanceUID": (INSTANCE, "i.sop_instance_uid", "uid"),
    "SOPClassUID": (INSTANCE, "i.sop_class_uid", "uid"),
    "InstanceNumber": (INSTANCE, "i.instance_number", "int"),
    "Rows": (INSTANCE, "i.rows", "int"),
    "Columns": (INSTANCE, "i.columns", "int"),
    "NumberOfFrames": (INSTANCE, "i.number_of_frames", "int"),
}
_LEVELS = {STUDY: 0, SERIES: 1, INSTANCE: 2}
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}


@dataclass
class Query:
    """A parsed QIDO request. `sites` None: every site (admin)."""

    level: str
    filters: dict[str, str] = field(default_factory=dict)
    limit: int = 0
    offset: int = 0
    sites: Sequence[str] | None = None


def parse_query(
    level: str,
    params: Mapping[str, str] | Sequence[tuple[str, str]],
    path_uids: Mapping[str, str],
    max_results: int,
    sites: Sequence[str] | None,
) -> Query:
    """Validate the query string; path UIDs (`/studies/{s}/series`) become UID filters."""
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    q = Query(level=level, limit=max_results, sites=sites)
    for name, value in items:
        if name in _CONTROL:
            _control(q, name, value, max_results)
            continue
        keyword = _keyword(name)
        if keyword not in ATTRIBUTES:
            raise BadRequest(f"unsupported query attribute {name[:64]!r}")
        if _LEVELS[ATTRIBUTES[keyword][0]] > _LEVELS[level]:
            raise BadRequest(f"{keyword} cannot be matched at the {level.lower()} level")
        if keyword in q.filters:
            value = q.filters[keyword] + "\\" + value  # repeated parameter: OR of values
        q.filters[keyword] = value
    for keyword, uid in path_uids.items():
        if not is_valid_uid(uid):
            raise BadRequest(f"{keyword} in the path is not a valid UID")
        q.filters[keyword] = uid
    return q


def _control(q: Query, name: str, value: str, max_results: int) -> None:
    if name in ("limit", "offset"):
        try:
            n = int(value)
        except ValueError as exc:
            raise BadRequest(f"{name} must be an integer") from exc
        if n < 0:
            raise BadRequest(f"{name} must be >= 0")
        if name == "limit":
            q.limit = min(n, max_results) if n else max_results
        else:
            q.offset = n
    elif name == "fuzzymatching" and value.lower() not in ("false", ""):
        raise BadRequest("fuzzymatching is not supported")


def _keyword(name: str) -> str:
    """A keyword or an 8-digit hex tag, as QIDO allows both."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        kw = keyword_for_tag(int(name, 16))
        return kw or name
    return name


def _match(column: str, kind: str, value: str, keyword: str = "") -> tuple[str, list[Any]]:
    """One attribute's condition (PS3.4 C.2.2.2) by the rules shared with the edge's C-FIND
    (`shared.matching`); "" is a universal match. cloud_api/handlers.py also calls it to
    validate a UID list (kind "uid")."""
    args: list[Any] = []
    values = matching.split_values(value, commas=kind in ("uid", "modalities"))
    if kind == "modalities":
        inner = matching.any_of([matching.string("ms.modality", v, args) for v in values if v])
        if not inner:
            return "", []
        return f"EXISTS (SELECT 1 FROM series ms WHERE ms.study_id = st.id AND {inner})", args
    if kind == "uid":
        uids = matching.uids(values, validate=True)
        return (matching.one_of(column, uids, args) if uids else ""), args
    if kind in ("date", "time"):
        short = "da" if kind == "date" else "tm"
        terms = [matching.date_time(column, v, short, keyword, args) for v in values]
        return matching.any_of(terms), args
    if kind == "int":
        return matching.one_of(column, [matching.integer(keyword, v) for v in values], args), args
    if kind == "pn":
        values = [matching.person_name(v) for v in values]
    return matching.any_of([matching.string(column, v, args) for v in values]), args


def build_sql(q: Query) -> tuple[str, list[Any]]:
    """The SELECT for a query; fetches `limit + 1` rows so truncation can be reported."""
    where: list[str] = []
    args: list[Any] = []
    for keyword, value in q.filters.items():
        if value == "" or value == "*":
            continue  # universal match
        _, column, kind = ATTRIBUTES[keyword]
        cond, a = _match(column, kind, value, keyword)
        if cond:
            where.append(cond)
            args.extend(a)
    if q.sites is not None:
        if not q.sites:
            where.append("0")
        else:
            where.append(f"st.site IN ({','.join('?' * len(q.sites))})")
            args.extend(q.sites)
    if q.level == STUDY:
        needs_series = any(ATTRIBUTES[k][0] != STUDY for k in q.filters)
        sql = (
            "SELECT DISTINCT st.*, (SELECT group_concat(DISTINCT m.modality) FROM series m"
            " WHERE m.study_id = st.id) AS modalities FROM studies st"
        )
        if needs_series:
            sql += " JOIN series se ON se.study_id = st.id"
        order = " ORDER BY st.study_date DESC, st.study_time DESC, st.study_uid, st.site"
    elif q.level == SERIES:
        sql = (
            "SELECT st.*, se.*, se.num_instances AS series_instances FROM series se"
            " JOIN studies st ON st.id = se.study_id"
        )
        order = " ORDER BY st.study_uid, se.series_number, se.series_uid, st.site"
    else:
        sql = (
            "SELECT st.*, se.*, i.* FROM instances i JOIN series se ON se.id = i.series_id"
            " JOIN studies st ON st.id = i.study_id"
        )
        order = " ORDER BY st.study_uid, se.series_uid, i.instance_number, i.sop_instance_uid"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += order + " LIMIT ? OFFSET ?"
    args.extend([q.limit + 1, q.offset])
    return sql, args


# ---- DICOM JSON -------------------------------------------------------------------------------

_STUDY_OUT = [
    ("SpecificCharacterSet", "specific_character_set"),
    ("StudyDate", "study_date"),
    ("StudyTime", "study_time"),
    ("AccessionNumber", "accession_number"),
    ("ReferringPhysicianName", "referring_physician"),
    ("PatientName", "patient_name"),
    ("PatientID", "patient_id"),
    ("IssuerOfPatientID", "issuer_of_patient_id"),
    ("PatientBirthDate", "patient_birth_date"),
    ("PatientSex", "patient_sex"),
    ("StudyInstanceUID", "study_uid"),
    ("StudyID", "study_id"),
    ("StudyDescription", "study_description"),
]
_SERIES_OUT = [
    ("Modality", "modality"),
    ("SeriesDescription", "series_description"),
    ("BodyPartExamined", "body_part"),
    ("SeriesInstanceUID", "series_uid"),
    ("SeriesNumber", "series_number"),
    ("SeriesDate", "series_date"),
    ("SeriesTime", "series_time"),
]
_INSTANCE_OUT = [
    ("SOPClassUID", "sop_class_uid"),
    ("SOPInstanceUID", "sop_instance_uid"),
    ("InstanceNumber", "instance_number"),
    ("Rows", "rows"),
    ("Columns", "columns"),
    ("NumberOfFrames", "number_of_frames"),
]


def element(keyword: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON attribute (PS3.18 F.2); empty values carry only the VR."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    vr = dictionary_VR(tag)
    out: dict[str, Any] = {"vr": vr}
    if value is None or value == "":
        return out
    if vr == "PN":
        out["Value"] = [{"Alphabetic": v} for v in str(value).split("\\")]
    elif vr in ("IS", "US", "UL", "SL", "SS"):
        out["Value"] = [int(value)]
    elif isinstance(value, list):
        out["Value"] = value
    else:
        out["Value"] = str(value).split("\\") if vr == "CS" else [str(value)]
    return out


def render(level: str, row: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """A result row as a DICOM JSON dataset, with RetrieveURL at its level."""
    attrs: dict[str, Any] = {}
    for kw, col in _STUDY_OUT:
        attrs[kw] = row[col]
    url = f"{base_url}/studies/{row['study_uid']}"
    if level == STUDY:
        attrs["ModalitiesInStudy"] = [m for m in (row["modalities"] or "").split(",") if m]
        attrs["NumberOfStudyRelatedSeries"] = row["num_series"]
        attrs["NumberOfStudyRelatedInstances"] = row["num_instances"]
    else:
        for kw, col in _SERIES_OUT:
            attrs[kw] = row[col]
        url += f"/series/{row['series_uid']}"
        if level == SERIES:
            attrs["NumberOfSeriesRelatedInstances"] = row["series_instances"]
        else:
            for kw, col in _INSTANCE_OUT:
                attrs[kw] = row[col]
            url += f"/instances/{row['sop_instance_uid']}"
    attrs["RetrieveURL"] = url
    out = {}
    for kw, value in attrs.items():
        if kw == "SpecificCharacterSet" and not value:
            continue
        out[f"{tag_for_keyword(kw):08X}"] = element(kw, value)
    return dict(sorted(out.items()))
