"""Searches of the cloud catalog: a `Search` -> SQL in a dialect -> {keyword: value} rows.

The same statements serve both backends (`shared.sqldialect` renders the predicates of
`shared.matching`); the backend only executes them. One row per UID: a study cataloged by an
edge site and by STOW is one study. A reader's site scope filters through `study_sites` /
`copies`, and its counts and ModalitiesInStudy are computed over the sites in scope for the
page returned (the rows' own counters are the all-sites figures an admin sees).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from cloud_api.catalog import INSTANCE, SERIES, STUDY, InstanceRef, Search
from shared import attributes, matching
from shared.attributes import BY_KEYWORD, DATE, INT, PN, TIME, UID, Attribute
from shared.errors import BadRequest
from shared.matching import Predicate
from shared.sqldialect import Dialect

Execute = Callable[[str, list[Any]], list[dict[str, Any]]]

_ALIAS = {"studies": "st", "series": "se", "instances": "i"}
_COMPUTED = {
    "NumberOfStudyRelatedSeries": "st.num_series",
    "NumberOfStudyRelatedInstances": "st.num_instances",
    "ModalitiesInStudy": "st.modalities",
    "NumberOfSeriesRelatedInstances": "se.num_instances",
}
# What each level answers: its own attributes and those of the levels above.
_LEVEL_TABLES = {
    STUDY: ("studies",),
    SERIES: ("studies", "series"),
    INSTANCE: ("studies", "series", "instances"),
}
_FROM = {
    STUDY: "studies st",
    SERIES: "series se JOIN studies st ON st.id = se.study_id",
    INSTANCE: "instances i JOIN series se ON se.id = i.series_id "
    "JOIN studies st ON st.id = i.study_id",
}
_ORDER = {
    STUDY: "st.study_date DESC, st.study_time DESC, st.study_uid DESC",
    SERIES: "st.study_uid, se.series_number NULLS FIRST, se.series_uid",
    INSTANCE: "st.study_uid, se.series_uid, i.instance_number NULLS FIRST, i.sop_instance_uid",
}
MATCHABLE = {
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


def _select(level: str) -> list[str]:
    cols = []
    for table in _LEVEL_TABLES[level]:
        alias = _ALIAS[table]
        for a in attributes.stored_at(table):
            if a.column == "specific_character_set":
                continue
            cols.append(f'{alias}.{a.column} AS "{a.keyword}"')
    charset = "i" if level == INSTANCE else "st"
    cols.append(f'{charset}.specific_character_set AS "SpecificCharacterSet"')
    if level == STUDY:
        cols += [f'{expr} AS "{kw}"' for kw, expr in _COMPUTED.items() if expr.startswith("st.")]
    if level == SERIES:
        cols.append('se.num_instances AS "NumberOfSeriesRelatedInstances"')
    cols.append('st.id AS "_study"')
    if level != STUDY:
        cols.append('se.id AS "_series"')
    return cols


_SELECT = {level: ", ".join(_select(level)) for level in (STUDY, SERIES, INSTANCE)}


def scope(level: str, sites: Sequence[str] | None, alias: str = "") -> Predicate | None:
    """The reader's site scope at a level (None: every site)."""
    if sites is None:
        return None
    if not sites:
        return matching.Never()
    site_in = matching.one_of("c.site", list(sites))
    if level == STUDY:
        return matching.Exists("study_sites c", f"c.study_id = {alias or 'st'}.id", site_in)
    link = f"c.series_id = {alias or 'se'}.id" if level == SERIES else "c.instance_id = i.id"
    return matching.Exists("copies c", link, site_in)


def predicate(a: Attribute, values: list[str], sites: Sequence[str] | None) -> Predicate | None:
    """One key's condition on this schema (PS3.4 C.2.2.2, the rules shared with C-FIND)."""
    if a.keyword == "ModalitiesInStudy":
        inner = matching.any_of([matching.string("x.modality", v) for v in values])
        if inner is None:
            return None
        term = matching.all_of([inner, scope(SERIES, sites, alias="x")])
        assert term is not None
        return matching.Exists("series x", "x.study_id = st.id", term)
    col = f"{_ALIAS[a.table]}.{a.norm_column if a.ci else a.column}"
    if a.kind == UID:
        uids = matching.uids(values, validate=True)
        return matching.one_of(col, uids) if uids else None
    if a.kind in (DATE, TIME):
        short = "da" if a.kind == DATE else "tm"
        return matching.any_of([matching.date_time(col, v, short, a.keyword) for v in values])
    if a.kind == INT:
        return matching.one_of(col, [matching.integer(a.keyword, v) for v in values])
    if a.ci or a.kind == PN:
        values = [attributes.normalize(v) for v in values]
    return matching.any_of([matching.string(col, v) for v in values])


def build(q: Search, d: Dialect) -> tuple[str, list[Any]]:
    terms: list[Predicate | None] = []
    for keyword, values in q.filters.items():
        if keyword not in MATCHABLE[q.level]:
            raise BadRequest(f"{keyword} cannot be matched at the {q.level.lower()} level")
        terms.append(predicate(BY_KEYWORD[keyword], values, q.sites))
    terms.append(scope(q.level, q.sites))
    params: list[Any] = []
    where = d.render(matching.all_of(terms), params)
    sql = f"SELECT {_SELECT[q.level]} FROM {_FROM[q.level]}"
    if where:
        sql += f" WHERE {where}"
    sql += f" ORDER BY {_ORDER[q.level]} LIMIT {d.param} OFFSET {d.param}"
    params += [q.limit, q.offset]
    return sql, params


def search(q: Search, d: Dialect, execute: Execute) -> list[dict[str, Any]]:
    """Run a search: the page, then (for a scoped reader) its counts over the sites in scope."""
    sql, params = build(q, d)
    rows = execute(sql, params)
    if q.sites is not None and rows and q.level in (STUDY, SERIES):
        _scoped_figures(q, rows, d, execute)
    out = []
    for r in rows:
        r.pop("_study", None)
        r.pop("_series", None)
        mods = r.get("ModalitiesInStudy")
        if mods is not None:
            r["ModalitiesInStudy"] = [m for m in mods.split("\\") if m]
        out.append(r)
    return out


def _scoped_figures(q: Search, rows: list[dict[str, Any]], d: Dialect, execute: Execute) -> None:
    """NumberOf*Related* and ModalitiesInStudy over the reader's sites, for one page."""
    sites = list(q.sites or ())
    key = "_study" if q.level == STUDY else "_series"
    ids = sorted({r[key] for r in rows})
    in_ids, in_sites = d.placeholders(len(ids)), d.placeholders(len(sites))
    if q.level == SERIES:
        found = execute(
            f"SELECT series_id AS id, count(DISTINCT instance_id) AS n FROM copies"
            f" WHERE series_id IN ({in_ids}) AND site IN ({in_sites}) GROUP BY series_id",
            [*ids, *sites],
        )
        counts = {f["id"]: f["n"] for f in found}
        for r in rows:
            r["NumberOfSeriesRelatedInstances"] = counts.get(r[key], 0)
        return
    if len(sites) == 1:  # the usual reader: the per-site counters are exact
        sql = (
            f"SELECT study_id AS id, num_series AS s, num_instances AS n FROM study_sites"
            f" WHERE study_id IN ({in_ids}) AND site IN ({in_sites})"
        )
    else:  # an instance at two sites in scope counts once
        sql = (
            f"SELECT study_id AS id, count(DISTINCT series_id) AS s,"
            f" count(DISTINCT instance_id) AS n FROM copies"
            f" WHERE study_id IN ({in_ids}) AND site IN ({in_sites}) GROUP BY study_id"
        )
    figures = {f["id"]: (f["s"], f["n"]) for f in execute(sql, [*ids, *sites])}
    mods: dict[int, set[str]] = defaultdict(set)
    for m in execute(
        f"SELECT se.study_id AS id, se.modality AS m FROM series se"
        f" WHERE se.study_id IN ({in_ids}) AND se.modality <> '' AND EXISTS"
        f" (SELECT 1 FROM copies c WHERE c.series_id = se.id AND c.site IN ({in_sites}))",
        [*ids, *sites],
    ):
        mods[m["id"]].add(m["m"])
    for r in rows:
        s, n = figures.get(r[key], (0, 0))
        r["NumberOfStudyRelatedSeries"], r["NumberOfStudyRelatedInstances"] = s, n
        r["ModalitiesInStudy"] = "\\".join(sorted(mods[r[key]]))


def instances_sql(
    study_uid: str,
    series_uid: str | None,
    sop_instance_uid: str | None,
    sites: Sequence[str] | None,
    d: Dialect,
) -> tuple[str, list[Any]]:
    """Instances of a study/series/instance, each once: the copy of the first site in scope."""
    p = d.param
    params: list[Any] = []
    in_scope = ""
    if sites is not None:
        in_scope = f" AND c2.site IN ({d.placeholders(len(sites))})"
        params += list(sites)
    where = [f"st.study_uid = {p}"]
    params.append(study_uid)
    if series_uid is not None:
        where.append(f"se.series_uid = {p}")
        params.append(series_uid)
    if sop_instance_uid is not None:
        where.append(f"i.sop_instance_uid = {p}")
        params.append(sop_instance_uid)
    sql = (
        "SELECT st.study_uid, se.series_uid, i.sop_instance_uid, i.sop_class_uid,"
        " i.instance_number, c.transfer_syntax, c.object_key, c.size, c.crc32c"
        " FROM studies st JOIN instances i ON i.study_id = st.id"
        " JOIN series se ON se.id = i.series_id"
        " JOIN copies c ON c.instance_id = i.id AND c.site ="
        f" (SELECT min(c2.site) FROM copies c2 WHERE c2.instance_id = i.id{in_scope})"
        f" WHERE {' AND '.join(where)}"
        " ORDER BY se.series_uid, i.instance_number NULLS FIRST, i.sop_instance_uid"
    )
    return sql, params


def instances(
    study_uid: str,
    series_uid: str | None,
    sop_instance_uid: str | None,
    sites: Sequence[str] | None,
    d: Dialect,
    execute: Execute,
) -> list[InstanceRef]:
    if sites is not None and not sites:
        return []
    sql, params = instances_sql(study_uid, series_uid, sop_instance_uid, sites, d)
    return [InstanceRef(**r) for r in execute(sql, params)]
