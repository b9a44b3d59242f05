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
from dataclasses import dataclass
from typing import Any

from cloud_api.catalog import INSTANCE, SERIES, STUDY, InstanceRef, Search
from cloud_api.catalog.schema import ALL_SITES, ORDER_KEYS
from shared import attributes, matching
from shared.attributes import BY_KEYWORD, DATE, INT, PN, TIME, UID, Attribute
from shared.errors import BadRequest
from shared.matching import And, Eq, Predicate
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
    "JOIN studies st ON st.id = se.study_id",
}
_ORDER = {
    STUDY: ", ".join(f"st.{k} DESC" for k in ORDER_KEYS),
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
    if level == SERIES:
        return matching.Exists("series_sites c", f"c.series_id = {alias or 'se'}.id", site_in)
    return matching.Exists("copies c", "c.sop_instance_uid = i.sop_instance_uid", site_in)


def predicate(
    a: Attribute, values: list[str], sites: Sequence[str] | None, keys: str = "st"
) -> Predicate | None:
    """One key's condition on this schema (PS3.4 C.2.2.2, the rules shared with C-FIND);
    StudyDate on `keys`, the table walked for its order keys (its index then bounds the walk)."""
    if a.keyword == "ModalitiesInStudy":
        inner = matching.any_of([matching.string("x.modality", v) for v in values])
        if inner is None:
            return None
        if sites is not None and not sites:
            return matching.Never()
        where = matching.one_of("x.site", list(sites) if sites is not None else [ALL_SITES])
        return matching.Exists("study_modalities x", "x.study_id = st.id", And((inner, where)))
    col = f"{_ALIAS[a.table]}.{a.norm_column if a.ci else a.column}"
    if a.column == "study_date":
        col = f"{keys}.study_date"
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


@dataclass(frozen=True)
class _Driver:
    """The rows a search walks, in answer order: FROM, ORDER BY, the walk's own condition,
    the matching key it already answers and whether it is already the reader's scope."""

    source: str
    order: str
    where: Predicate | None = None
    answers: str = ""
    in_scope: bool = False
    keys: str = "st"  # the alias whose copy of the order keys the walk follows


def _by_site_keys(table: str, alias: str, where: Predicate, answers: str = "") -> _Driver:
    order = ", ".join(f"{alias}.{k} DESC" for k in ORDER_KEYS)
    source = f"{table} {alias} JOIN studies st ON st.id = {alias}.study_id"
    return _Driver(source, order, where, answers, in_scope=True, keys=alias)


def driver(q: Search) -> _Driver:
    """Studies newest first from the narrowest index that holds them in that order: one
    modality's studies (`study_modalities`), else a single-site reader's (`study_sites`),
    else every study. Each walk then stops after the page, however rare its rows are."""
    plain = _Driver(_FROM[q.level], _ORDER[q.level])
    if q.level != STUDY or (q.sites is not None and len(q.sites) != 1):
        return plain
    site = q.sites[0] if q.sites is not None else ALL_SITES
    values = q.filters.get("ModalitiesInStudy")
    if values is not None:
        term = matching.any_of([matching.string("m.modality", v) for v in values])
        if isinstance(term, Eq):  # one literal value; lists and wildcards take EXISTS
            where = And((term, Eq("m.site", site)))
            return _by_site_keys("study_modalities", "m", where, "ModalitiesInStudy")
    if q.sites is None:
        return plain
    return _by_site_keys("study_sites", "c", Eq("c.site", site))


def build(q: Search, d: Dialect) -> tuple[str, list[Any]]:
    walk = driver(q)
    terms: list[Predicate | None] = [walk.where]
    for keyword, values in q.filters.items():
        if keyword not in MATCHABLE[q.level]:
            raise BadRequest(f"{keyword} cannot be matched at the {q.level.lower()} level")
        if keyword != walk.answers:
            terms.append(predicate(BY_KEYWORD[keyword], values, q.sites, walk.keys))
    if not walk.in_scope:
        terms.append(scope(q.level, q.sites))
    params: list[Any] = []
    where = d.render(matching.all_of(terms), params)
    sql = f"SELECT {_SELECT[q.level]} FROM {walk.source}"
    if where:
        sql += f" WHERE {where}"
    sql += f" ORDER BY {walk.order} LIMIT {d.param} OFFSET {d.param}"
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
        counts = {f["id"]: f["n"] for f in execute(*_series_counts(ids, sites, d))}
        for r in rows:
            r["NumberOfSeriesRelatedInstances"] = counts.get(r[key], 0)
        return
    if len(sites) == 1:  # the usual reader: the per-site counters are exact
        sql = (
            f"SELECT study_id AS id, num_series AS s, num_instances AS n FROM study_sites"
            f" WHERE study_id IN ({in_ids}) AND site IN ({in_sites})"
        )
        params = [*ids, *sites]
    else:  # an instance at two sites in scope counts once
        inner, params = _series_counts(ids, sites, d, by_study=True)
        sql = f"SELECT study_id AS id, count(*) AS s, sum(n) AS n FROM ({inner}) x"
        sql += " GROUP BY study_id"
    figures = {f["id"]: (f["s"], f["n"]) for f in execute(sql, params)}
    mods: dict[int, set[str]] = defaultdict(set)
    for m in execute(
        f"SELECT study_id AS id, modality AS m FROM study_modalities"
        f" WHERE study_id IN ({in_ids}) AND site IN ({in_sites}) AND modality <> ''",
        [*ids, *sites],
    ):
        mods[m["id"]].add(m["m"])
    for r in rows:
        s, n = figures.get(r[key], (0, 0))
        r["NumberOfStudyRelatedSeries"], r["NumberOfStudyRelatedInstances"] = s, int(n)
        r["ModalitiesInStudy"] = "\\".join(sorted(mods[r[key]]))


def _series_counts(
    ids: list[int], sites: list[str], d: Dialect, by_study: bool = False
) -> tuple[str, list[Any]]:
    """(id, n): the instances of each series (`ids`; of each study's series with `by_study`)
    held by a site in scope, each once. A series at one site in scope takes that site's
    counter; only one at several sites counts its instances."""
    in_ids, in_sites = d.placeholders(len(ids)), d.placeholders(len(sites))
    owner = "se.study_id" if by_study else "se.id"
    sql = (
        f"SELECT {owner} AS {'study_id' if by_study else 'id'}, CASE WHEN x.k = 1 THEN x.n ELSE"
        " (SELECT count(*) FROM instances i WHERE i.series_id = x.series_id AND EXISTS"
        " (SELECT 1 FROM copies c WHERE c.sop_instance_uid = i.sop_instance_uid"
        f" AND c.site IN ({in_sites})))"
        " END AS n FROM (SELECT ss.series_id, count(*) AS k, max(ss.num_instances) AS n"
        f" FROM series_sites ss JOIN series se ON se.id = ss.series_id"
        f" WHERE {owner} IN ({in_ids}) AND ss.site IN ({in_sites}) GROUP BY ss.series_id) x"
        " JOIN series se ON se.id = x.series_id"
    )
    return sql, [*sites, *ids, *sites]


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
        " FROM studies st JOIN series se ON se.study_id = st.id"
        " JOIN instances i ON i.series_id = se.id"
        " JOIN copies c ON c.sop_instance_uid = i.sop_instance_uid AND c.site = (SELECT"
        f" min(c2.site) FROM copies c2 WHERE c2.sop_instance_uid = i.sop_instance_uid{in_scope})"
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
