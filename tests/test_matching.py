"""shared.matching, table-driven: one value -> SQL term -> which rows of a real SQLite table
match, and the same predicates rendered for a real PostgreSQL must match the same rows.

The same rules serve the edge's C-FIND and the cloud catalog's searches; the key-level tests
stay in tests/test_query.py (edge schema) and tests/test_catalog_contract.py (cloud schema).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.pgcluster import Cluster
from shared import matching
from shared.errors import BadRequest
from shared.sqldialect import POSTGRES, SQLITE
from tests.support.postgres import fresh_database

ROWS = [
    "SMITH^JOHN",
    "SMITHS^ANNA",
    "O'BRIEN^PAT",
    "A%1",
    "A_1",
    "AB1",
    "50% DOSE",
    '[X] say "h?"',
    "MÜLLER^JÜRGEN",
    "C:\\DIR_1",
    "",
]
DATES = ["20240101", "20240115", "20240131", "20240201", "20231231", ""]
TIMES = ["083000", "120000", "125959.999", "130000", ""]


@pytest.fixture(scope="module")
def conn() -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(":memory:")
    c.execute("CREATE TABLE t (s TEXT, d TEXT, tm TEXT)")
    c.execute("CREATE INDEX t_s ON t (s)")
    n = max(len(ROWS), len(DATES), len(TIMES))
    for i in range(n):
        c.execute(
            "INSERT INTO t VALUES (?, ?, ?)",
            (_at(ROWS, i), _at(DATES, i), _at(TIMES, i)),
        )
    yield c
    c.close()


def _at(values: list[str], i: int) -> str | None:
    return values[i] if i < len(values) else None


def matches(conn: sqlite3.Connection, col: str, term: str, params: list[Any]) -> set[str]:
    where = term or "1"
    return {r[0] for r in conn.execute(f"SELECT {col} FROM t WHERE {where}", params)} - {None}


STRING_CASES = [
    ("SMITH^JOHN", {"SMITH^JOHN"}),
    ("SMITH", set()),  # whole-value match
    ("SMITH*", {"SMITH^JOHN", "SMITHS^ANNA"}),
    ("SMIT?^JOHN", {"SMITH^JOHN"}),
    ("*^ANNA", {"SMITHS^ANNA"}),
    ("O'BRIEN*", {"O'BRIEN^PAT"}),
    ("A%1", {"A%1"}),
    ("A_1", {"A_1"}),
    ("A_*", {"A_1"}),
    ("%", set()),
    ("50%*", {"50% DOSE"}),
    ("[X]*", {'[X] say "h?"'}),
    ('*"h?"', {'[X] say "h?"'}),
    ("MÜ*", {"MÜLLER^JÜRGEN"}),
    ("C:\\D*", {"C:\\DIR_1"}),  # a backslash is literal too
    ("*\\DIR?1", {"C:\\DIR_1"}),
    ("*", set(ROWS) - {""} | {""}),
    ("***", set(ROWS)),
]


@pytest.mark.parametrize(("value", "expected"), STRING_CASES)
def test_string(conn: sqlite3.Connection, value: str, expected: set[str]) -> None:
    params: list[Any] = []
    term = SQLITE.render(matching.string("s", value), params)
    assert value not in term  # values never reach the SQL text
    assert matches(conn, "s", term, params) == expected


def test_prefix_patterns_are_index_ranges(conn: sqlite3.Connection) -> None:
    params: list[Any] = []
    term = SQLITE.render(matching.string("s", "SMITH*"), params)
    assert "GLOB" not in term
    plan = " ".join(
        r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN SELECT s FROM t WHERE {term}", params)
    )
    assert "t_s" in plan, plan


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240115", {"20240115"}),
        ("2024.01.15", {"20240115"}),
        ("20240101-20240131", {"20240101", "20240115", "20240131"}),
        ("20240201-", {"20240201"}),
        ("-20231231", {"20231231"}),  # a range never matches an empty value
        ("-", set(DATES) - {""}),
        ("", set(DATES)),
    ],
)
def test_dates(conn: sqlite3.Connection, value: str, expected: set[str]) -> None:
    params: list[Any] = []
    term = SQLITE.render(matching.date_time("d", value, "da", "StudyDate"), params)
    assert matches(conn, "d", term, params) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("-12", {"083000", "120000", "125959.999"}),  # an upper bound is a prefix
        ("12:00-", {"120000", "125959.999", "130000"}),
        ("120000", {"120000"}),
    ],
)
def test_times(conn: sqlite3.Connection, value: str, expected: set[str]) -> None:
    params: list[Any] = []
    term = SQLITE.render(matching.date_time("tm", value, "tm", "StudyTime"), params)
    assert matches(conn, "tm", term, params) == expected


@pytest.mark.parametrize("value", ["2024-01-01x", "yesterday", "1' OR 1=1"])
def test_bad_dates_refused_without_the_value(value: str) -> None:
    with pytest.raises(BadRequest) as err:
        matching.date_time("d", value, "da", "PatientBirthDate")
    assert value not in str(err.value)


@pytest.mark.parametrize(
    ("raw", "commas", "expected"),
    [
        ("1.2\\1.3", False, ["1.2", "1.3"]),
        ("1.2,1.3", True, ["1.2", "1.3"]),
        ("1.2,1.3", False, ["1.2,1.3"]),
        (["1.2 ", "1.3"], False, ["1.2", "1.3"]),
        (None, False, []),
        ("", False, [""]),
    ],
)
def test_split_values(raw: Any, commas: bool, expected: list[str]) -> None:
    assert matching.split_values(raw, commas) == expected


def test_uids_and_lists() -> None:
    params: list[Any] = []
    term = SQLITE.render(matching.one_of("u", matching.uids(["1.2", "", "1.3"])), params)
    assert term == "u IN (?, ?)"
    assert params == ["1.2", "1.3"]
    with pytest.raises(BadRequest):
        matching.uids(["1.2", "x.y"], validate=True)
    a, b = matching.Eq("a", 1), matching.Eq("b", 2)
    assert SQLITE.render(matching.any_of([a, None]), []) == ""  # one universal value: all match
    assert SQLITE.render(matching.any_of([a, b]), []) == "(a = ? OR b = ?)"


def test_person_name_and_integer() -> None:
    assert matching.person_name("müller^anna") == "MÜLLER^ANNA"
    assert matching.integer("SeriesNumber", " 3") == 3
    with pytest.raises(BadRequest):
        matching.integer("SeriesNumber", "two")


@pytest.mark.parametrize(
    ("prefix", "successor"), [("SMITH", "SMITI"), ("A^", "A_"), ("MÜ", "MÝ"), ("\ud7ff", "\ue000")]
)
def test_prefix_successor(prefix: str, successor: str) -> None:
    assert matching.successor(prefix) == successor


@pytest.fixture(scope="module")
def pg(pg_cluster: Cluster) -> Iterator[Any]:
    """The same table in PostgreSQL, text columns COLLATE "C" as in the cloud catalog."""
    import psycopg

    c = psycopg.connect(fresh_database(pg_cluster), autocommit=True)
    c.execute('CREATE TABLE t (s TEXT COLLATE "C", d TEXT COLLATE "C", tm TEXT COLLATE "C")')
    n = max(len(ROWS), len(DATES), len(TIMES))
    for i in range(n):
        c.execute("INSERT INTO t VALUES (%s, %s, %s)", (_at(ROWS, i), _at(DATES, i), _at(TIMES, i)))
    yield c
    c.close()


def pg_matches(pg: Any, col: str, pred: matching.Predicate | None) -> set[str]:
    params: list[Any] = []
    where = POSTGRES.render(pred, params) or "TRUE"
    return {r[0] for r in pg.execute(f"SELECT {col} FROM t WHERE {where}", params)} - {None}


@pytest.mark.parametrize(("value", "expected"), STRING_CASES)
def test_string_postgresql(pg: Any, value: str, expected: set[str]) -> None:
    assert pg_matches(pg, "s", matching.string("s", value)) == expected


@pytest.mark.parametrize(
    ("value", "kind", "col"),
    [("20240101-20240131", "da", "d"), ("-20231231", "da", "d"), ("-", "da", "d"),
     ("2024.01.15", "da", "d"), ("-12", "tm", "tm"), ("12:00-", "tm", "tm")],
)  # fmt: skip
def test_dates_and_times_postgresql(
    pg: Any, conn: sqlite3.Connection, value: str, kind: str, col: str
) -> None:
    pred = matching.date_time(col, value, kind, "X")
    params: list[Any] = []
    expected = matches(conn, col, SQLITE.render(pred, params), params)
    assert pg_matches(pg, col, pred) == expected
