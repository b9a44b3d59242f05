"""One contract for both cloud catalog backends: a SQLite file and a real PostgreSQL.

Fed only by `catalog/<site>/` journal objects seeded the way the sync agent writes them; every
test runs once per backend (the `catalog_url` fixture), and the two must give the same answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_api.catalog import INSTANCE, SERIES, STUDY, Catalog, Search, open_catalog, search
from cloud_api.catalog import poller as poller_module
from cloud_api.catalog.poller import Poller, fetch_rows
from shared.catalog import decode_batch
from shared.errors import BadRequest
from shared.store.base import ObjectStore, open_store
from shared.synthetic import StudySpec, catalog_rows
from tests.support.cloud import append_rows, seed_site


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path / 'bucket'}")


@pytest.fixture
def catalog(catalog_url: str, tmp_path: Path) -> Iterator[Catalog]:
    c = open_catalog(catalog_url, tmp_path / "cloud")
    yield c
    c.close()


def uids(rows: list[dict[str, Any]], key: str = "StudyInstanceUID") -> list[str]:
    return [r[key] for r in rows]


def test_poll_is_incremental_and_discovers_sites(catalog: Catalog, store: ObjectStore) -> None:
    poller = Poller(catalog, store)
    seed_site(store, "north", StudySpec(patient_id="N1", instances_per_series=3), batch=2)
    first = poller.poll()
    assert (first.objects, first.rows, first.applied) == (2, 3, True)
    assert poller.poll().objects == 0  # nothing new: the cursor skips what was applied
    seed_site(store, "south", StudySpec(patient_id="S1"))
    seed_site(store, "north", StudySpec(patient_id="N2"))
    res = poller.poll()
    assert (res.objects, res.rows) == (2, 6)
    assert sorted(catalog.cursors()) == ["north", "south"]
    assert catalog.counts() == {"studies": 3, "series": 3, "instances": 9}
    assert [(c.site, c.studies, c.instances) for c in catalog.site_counts()] == [
        ("north", 2, 6),
        ("south", 1, 3),
    ]


def test_apply_is_idempotent_and_skips_an_applied_key(catalog: Catalog, store: ObjectStore) -> None:
    seed_site(store, "x", StudySpec(patient_id="X1", series_count=2))
    key = "catalog/x/000000000001.jsonl.gz"
    rows = fetch_rows(store, key)
    assert catalog.apply("x", rows) == 6  # STOW's immediate apply: no key
    before = catalog.search(Search(STUDY))
    assert catalog.apply("x", rows, key) == 6
    assert catalog.apply("x", rows, key) == 0  # the cursor is there already
    assert catalog.search(Search(STUDY)) == before
    assert catalog.counts() == {"studies": 1, "series": 2, "instances": 6}


def test_retracted_rows_disappear(catalog: Catalog, store: ObjectStore) -> None:
    poller = Poller(catalog, store)
    seed_site(store, "x", StudySpec(patient_id="X1", instances_per_series=2))
    poller.poll()
    with store.open("catalog/x/000000000001.jsonl.gz") as fh:
        originals = decode_batch(fh.read())
    gone = [dataclasses.replace(r, deleted=True) for r in originals]
    append_rows(store, "x", gone[:1])
    poller.poll()
    assert catalog.counts()["instances"] == 1
    (study,) = catalog.search(Search(STUDY))
    assert study["NumberOfStudyRelatedInstances"] == 1
    append_rows(store, "x", gone[1:])
    poller.poll()
    assert catalog.counts() == {"studies": 0, "series": 0, "instances": 0}
    assert catalog.site_counts() == []


def test_a_retraction_at_one_site_keeps_the_other_sites_copy(
    catalog: Catalog, store: ObjectStore
) -> None:
    seed_site(store, "a", StudySpec(patient_id="P", instances_per_series=2))
    with store.open("catalog/a/000000000001.jsonl.gz") as fh:
        rows = decode_batch(fh.read())
    append_rows(store, "b", [dataclasses.replace(r, site="b") for r in rows])  # same instances
    Poller(catalog, store).poll()
    assert catalog.counts()["instances"] == 2
    append_rows(store, "b", [dataclasses.replace(r, site="b", deleted=True) for r in rows])
    Poller(catalog, store).poll()
    assert catalog.counts()["instances"] == 2  # site a still has them
    assert catalog.search(Search(STUDY, sites=["b"])) == []
    study = rows[0].header.study_uid
    assert len(catalog.instances(study, sites=["a"])) == 2
    assert catalog.instances(study, sites=["b"]) == []


def _snapshot(catalog: Catalog) -> list[Any]:
    """Everything a client can see, and the cursors."""
    everything = [catalog.search(Search(level, limit=1000)) for level in (STUDY, SERIES, INSTANCE)]
    study = everything[0][0]["StudyInstanceUID"] if everything[0] else ""
    return [*everything, catalog.counts(), catalog.site_counts(), catalog.cursors(),
            catalog.instances(study), catalog.search(Search(SERIES, sites=["x"]))]  # fmt: skip


def test_a_failed_fetch_leaves_the_cursor_at_the_last_object_applied(
    catalog: Catalog, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poller fetches objects ahead of the apply: when one cannot be read (here it is not
    gzip), the groups before it are applied with their cursor, nothing at or after it is, and
    the next poll, once the object reads again, continues from there."""
    monkeypatch.setattr(poller_module, "GROUP_ROWS", 2)  # a group is two one-row objects
    seed_site(store, "x", StudySpec(patient_id="X1", instances_per_series=6), batch=1)
    keys = [i.key for i in store.list("catalog/x/")]
    with store.open(keys[3]) as fh:
        good = fh.read()
    store.put(keys[3], b"not a journal object", if_absent=False)
    poller = Poller(catalog, store)
    with pytest.raises(OSError):
        poller.poll()
    assert catalog.cursors() == {"x": keys[1]}
    assert catalog.counts()["instances"] == 2
    store.put(keys[3], good, if_absent=False)
    res = poller.poll()
    assert (res.objects, res.rows) == (4, 4)
    assert catalog.cursors() == {"x": keys[5]}
    assert catalog.counts()["instances"] == 6


def test_objects_applied_together_equal_one_by_one(catalog: Catalog) -> None:
    """A backlog applied several objects per transaction ends as applying each in turn: the
    last live row of an instance wins, a retraction that is its last row removes it, a study's
    attributes are the latest non-empty values, and objects up to the cursor are skipped."""
    rows = [dict(r) for _, r in catalog_rows(60, sites=1, seed=7)]
    for r in rows[:20]:
        r["study_description"] = "FIRST"
    for r in rows[20:51]:
        r["study_description"] = ""  # empty: keeps the value applied before
    for r in rows[40:50]:
        r["study_description"] = "LATER"
    assert len({r["study_uid"] for r in rows}) == 1

    def gone(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "deleted": True}

    again = {**rows[0], "instance_number": 99, "object_key": "instances/elsewhere.dcm"}
    objects = [
        rows[:20],
        [*rows[20:40], gone(rows[0])],
        [again, gone(rows[21]), *rows[40:50]],
        [gone(rows[41]), rows[41], rows[50], gone(rows[50])],  # back; added and retracted
    ]
    keys = [f"catalog/x/{n:012d}.jsonl.gz" for n in range(1, 5)]
    for key, obj in zip(keys, objects, strict=True):
        catalog.apply("x", obj, key)
    one_by_one = _snapshot(catalog)
    assert catalog.counts()["instances"] == 49
    assert one_by_one[0][0]["StudyDescription"] == "LATER"
    numbers = {i["SOPInstanceUID"]: i["InstanceNumber"] for i in one_by_one[2]}
    assert numbers[again["sop_instance_uid"]] == 99

    catalog.reset()
    assert catalog.apply_objects("x", list(zip(keys[:2], objects[:2], strict=True))) == 41
    grouped = list(zip(keys, objects, strict=True))
    assert catalog.apply_objects("x", grouped) == 16  # the first two are behind the cursor
    assert catalog.apply_objects("x", grouped) == 0
    assert _snapshot(catalog) == one_by_one


def test_counts_over_the_sites_in_scope(catalog: Catalog) -> None:
    """A reader's counts are over its sites; an instance held by two of them counts once."""
    rows = [dict(r) for _, r in catalog_rows(8, sites=1, seed=5)]
    series = rows[0]["series_uid"]
    one = [r for r in rows if r["series_uid"] == series][:4]
    assert len(one) == 4
    other = {**one[0], "series_uid": series + ".9", "sop_instance_uid": one[0]["sop_instance_uid"]
             + ".9", "series_number": 9}  # fmt: skip
    catalog.apply("a", one[:3])
    catalog.apply("b", [*one[1:], other])

    def figures(sites: list[str] | None) -> tuple[int, int, list[int]]:
        (study,) = catalog.search(Search(STUDY, sites=sites))
        per_series = catalog.search(Search(SERIES, sites=sites))
        return (study["NumberOfStudyRelatedSeries"], study["NumberOfStudyRelatedInstances"],
                [s["NumberOfSeriesRelatedInstances"] for s in per_series])  # fmt: skip

    assert figures(None) == (2, 5, [4, 1])
    assert figures(["a"]) == (1, 3, [3])
    assert figures(["b"]) == (2, 4, [3, 1])
    assert figures(["a", "b"]) == (2, 5, [4, 1])


def _world(store: ObjectStore) -> dict[str, str]:
    specs = {
        "s1": StudySpec(patient_id="P1", patient_name="SMITH^JOHN", study_date="20240110",
                        study_time="101500", study_description="CT Thorax", series_count=2,
                        accession_number="A%1"),
        "s2": StudySpec(patient_id="P2", patient_name="smithson^anna", study_date="20240320",
                        modality="MR", study_description="MR HEAD", accession_number="A_1"),
        "s3": StudySpec(patient_id="P3", patient_name="MÜLLER^JÜRGEN", study_date="20231231",
                        study_time="235959", study_description="[X] say \"h?\""),
        "s4": StudySpec(patient_id="P1", patient_name="SMITH^JOHN", study_date="20240110",
                        study_time="080000", modality="US", instances_per_series=1),
    }  # fmt: skip
    out = {}
    for i, (label, spec) in enumerate(specs.items()):
        spec.study_uid = f"1.2.826.0.1.3680043.10.1255.77{i}"
        seed_site(store, "a" if label != "s3" else "b", spec, batch=2)
        out[label] = spec.study_uid
    return out


STUDY_CASES = [
    ({}, ["s2", "s1", "s4", "s3"]),  # newest first: date, then time
    ({"PatientID": ["P1"]}, ["s1", "s4"]),
    ({"PatientName": ["smith*"]}, ["s2", "s1", "s4"]),  # names case-insensitive
    ({"PatientName": ["SMITH^JOHN"]}, ["s1", "s4"]),
    ({"PatientName": ["SMITH"]}, []),  # whole-value match
    ({"PatientName": ["*^ANNA"]}, ["s2"]),
    ({"PatientName": ["mü*"]}, ["s3"]),
    ({"PatientName": ["SMIT?^JOHN", "O*"]}, ["s1", "s4"]),
    ({"StudyDescription": ["ct thorax"]}, ["s1"]),  # descriptions too
    ({"StudyDescription": ["*x*"]}, ["s1", "s3"]),
    ({"StudyDescription": ['[x] say "h?"']}, ["s3"]),  # every character literal but * ?
    ({"AccessionNumber": ["A%1"]}, ["s1"]),
    ({"AccessionNumber": ["A_1"]}, ["s2"]),
    ({"AccessionNumber": ["A_*"]}, ["s2"]),
    ({"AccessionNumber": ["a_1"]}, []),  # other text keeps its case
    ({"StudyDate": ["20240101-20240131"]}, ["s1", "s4"]),
    ({"StudyDate": ["-20240110"]}, ["s1", "s4", "s3"]),
    ({"StudyDate": ["20240110"], "StudyTime": ["-09"]}, ["s4"]),
    ({"ModalitiesInStudy": ["MR", "US"]}, ["s2", "s4"]),
    ({"ModalitiesInStudy": ["?R"]}, ["s2"]),
    ({"StudyInstanceUID": ["1.2.826.0.1.3680043.10.1255.771", "1.2.3"]}, ["s2"]),
]


@pytest.mark.parametrize(("filters", "expected"), STUDY_CASES)
def test_study_matching(
    catalog: Catalog, store: ObjectStore, filters: dict[str, list[str]], expected: list[str]
) -> None:
    world = _world(store)
    Poller(catalog, store).poll()
    assert uids(catalog.search(Search(STUDY, filters))) == [world[k] for k in expected]


WALKS = [
    {},
    {"ModalitiesInStudy": ["CT"]},
    {"ModalitiesInStudy": ["MR"]},
    {"ModalitiesInStudy": ["US"], "PatientID": ["P1"]},
    {"ModalitiesInStudy": ["XA"]},
    {"PatientName": ["smith*"]},
    {"StudyDate": ["20240101-20240131"], "ModalitiesInStudy": ["CT"]},
]


@pytest.mark.parametrize("filters", WALKS, ids=lambda f: "-".join(f) or "all")
def test_every_walk_gives_the_same_answer(
    catalog: Catalog, store: ObjectStore, filters: dict[str, list[str]]
) -> None:
    """A reader of one site and a search on one modality walk their own indexes (study_sites,
    study_modalities); the answers are those of the general form: every study, filtered."""
    world = _world(store)
    s1_at_b = StudySpec(patient_id="P1", patient_name="SMITH^JOHN", study_date="20240110",
                        study_time="101500", modality="MR", study_uid=world["s1"])  # fmt: skip
    seed_site(store, "b", s1_at_b)  # s1: CT at a, MR at b
    Poller(catalog, store).poll()
    for sites in (None, ["a"], ["b"]):
        for offset in (0, 1):
            walked = Search(STUDY, filters, offset=offset, sites=sites)
            if sites is not None:  # two sites in scope, one without studies: no per-site walk
                general = dataclasses.replace(walked, sites=[*sites, "zz"])
            elif "ModalitiesInStudy" in filters:  # a list of values: no modality walk
                twice = filters["ModalitiesInStudy"] * 2
                general = dataclasses.replace(
                    walked, filters={**filters, "ModalitiesInStudy": twice}
                )
            else:
                continue
            assert search.driver(walked) != search.driver(general)
            assert catalog.search(walked) == catalog.search(general), (sites, offset)


def test_levels_paging_and_scope(catalog: Catalog, store: ObjectStore) -> None:
    world = _world(store)
    Poller(catalog, store).poll()
    s1 = catalog.search(Search(STUDY, {"StudyInstanceUID": [world["s1"]]}))[0]
    assert s1["NumberOfStudyRelatedSeries"] == 2 and s1["NumberOfStudyRelatedInstances"] == 6
    assert s1["ModalitiesInStudy"] == ["CT"] and s1["PatientName"] == "SMITH^JOHN"
    series = catalog.search(Search(SERIES, {"StudyInstanceUID": [world["s1"]]}))
    assert [s["SeriesNumber"] for s in series] == [1, 2]
    assert all(s["NumberOfSeriesRelatedInstances"] == 3 for s in series)
    insts = catalog.search(
        Search(INSTANCE, {"SeriesInstanceUID": [series[0]["SeriesInstanceUID"]]})
    )
    assert [i["InstanceNumber"] for i in insts] == [1, 2, 3]
    everything = uids(catalog.search(Search(INSTANCE, limit=100)), "SOPInstanceUID")
    pages = [
        uids(catalog.search(Search(INSTANCE, limit=4, offset=o)), "SOPInstanceUID")
        for o in range(0, 16, 4)
    ]
    assert [u for page in pages for u in page] == everything and len(everything) == 13
    assert uids(catalog.search(Search(STUDY, sites=["b"]))) == [world["s3"]]
    assert catalog.search(Search(STUDY, sites=[])) == []
    assert catalog.search(Search(SERIES, {"PatientID": ["P3"]}, sites=["a"])) == []
    refs = catalog.instances(world["s1"], sites=["a", "b"])
    assert len(refs) == 6 and all(r.size > 0 and r.object_key for r in refs)
    assert [r.instance_number for r in refs[:3]] == [1, 2, 3]
    one = catalog.instances(world["s1"], refs[0].series_uid, refs[0].sop_instance_uid)
    assert one == [refs[0]]
    assert catalog.instances(world["s1"], sites=["b"]) == []


def test_bad_values_are_refused(catalog: Catalog) -> None:
    for filters in (
        {"StudyDate": ["2024-01-01x"]},
        {"StudyInstanceUID": ["not a uid"]},
        {"NumberOfFrames": ["two"]},
        {"NumberOfFrames": ["99999999999999999999"]},
    ):
        with pytest.raises(BadRequest):
            catalog.search(Search(INSTANCE, filters))
    with pytest.raises(BadRequest):
        catalog.search(Search(STUDY, {"Modality": ["CT"]}))  # a series key at study level


def test_rebuild_gives_the_same_answers(
    catalog_url: str, tmp_path: Path, store: ObjectStore
) -> None:
    _world(store)
    queries = [Search(STUDY), Search(STUDY, {"PatientName": ["S*"]}), Search(SERIES),
               Search(INSTANCE, limit=5, offset=3), Search(STUDY, sites=["a"])]  # fmt: skip
    first = open_catalog(catalog_url, tmp_path / "one")
    Poller(first, store).poll()
    before = [first.search(q) for q in queries]
    first.close()
    again = open_catalog(_empty(catalog_url), tmp_path / "two")
    Poller(again, store).poll()
    assert [again.search(q) for q in queries] == before
    again.close()


def _empty(url: str) -> str:
    """The same backend, empty: another SQLite file, or the same database with its tables gone."""
    if not url:
        return ""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE catalog_meta")
    return url


def test_readiness(catalog: Catalog) -> None:
    catalog.check_ready()
    assert catalog.try_lead()


# The queries bench/catalog.py times, as a reader of one site would send them.
PLANNED = [
    Search(STUDY, {"PatientID": ["P1"]}, limit=100, sites=["a"]),
    Search(STUDY, {"PatientName": ["SMI*"]}, limit=100, sites=["a"]),
    Search(STUDY, {"StudyDate": ["20240101-20240331"]}, limit=100, sites=["a"]),
    Search(STUDY, {"ModalitiesInStudy": ["MR"]}, limit=100),
    Search(STUDY, {"ModalitiesInStudy": ["NM"]}, limit=100, sites=["a"]),
    Search(STUDY, {"ModalitiesInStudy": ["CT", "M?"]}, limit=100, sites=["a", "b"]),
    Search(STUDY, {}, limit=100, sites=["a"]),
    Search(STUDY, {"AccessionNumber": ["A*"]}, limit=100),
    Search(INSTANCE, {"SeriesInstanceUID": ["1.2.3"]}, limit=100, sites=["a"]),
    Search(SERIES, {"StudyInstanceUID": ["1.2.3"]}, limit=100, sites=["a"]),
]


@pytest.mark.parametrize("q", PLANNED, ids=lambda q: "-".join([q.level, *q.filters]))
def test_searches_use_indexes(catalog_url: str, tmp_path: Path, q: Search) -> None:
    """Every search is an index search: no full scan of a catalog table (EXPLAIN)."""
    from shared.sqldialect import POSTGRES, SQLITE

    catalog = open_catalog(catalog_url, tmp_path)
    catalog.close()
    if not catalog_url:
        import sqlite3

        sql, params = search.build(q, SQLITE)
        conn = sqlite3.connect(tmp_path / "catalog.sqlite")
        plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        conn.close()
        scans = [p for p in plan.split(" | ") if p.startswith("SCAN") and "INDEX" not in p]
        assert not scans, plan
        return
    import psycopg

    sql, params = search.build(q, POSTGRES)
    with psycopg.connect(catalog_url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")  # tiny tables: ask whether an index path exists
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params))
    assert "Seq Scan" not in plan, plan
