"""Retention rules and legal holds, decided from tables (shared/retention.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.config import ConfigError, RetentionRule, parse_config
from shared.retention import (
    FOREVER,
    Retention,
    StudyFacts,
    add_years,
    age_on,
    matches,
    may_delete,
    parse_da,
    retention,
)

D = dt.date
CHILDREN = RetentionRule(
    name="children", max_patient_age_years=18, years=10, until_patient_age_years=28
)
ADULTS = RetentionRule(name="adults", years=10)
MAMMO = RetentionRule(name="mammo", modalities=["MG"], years=15)
CT01 = RetentionRule(name="ct01", calling_aes=["CT01"], years=3)
RULES = [CHILDREN, ADULTS, MAMMO]
RECEIVED = D(2020, 1, 12)


def facts(
    study: str = "20200110",
    birth: str = "19800101",
    modalities: tuple[str, ...] = ("CT",),
    aes: tuple[str, ...] = ("CT01",),
    received: dt.date = RECEIVED,
) -> StudyFacts:
    return StudyFacts(
        "1.2.3",
        parse_da(study),
        parse_da(birth),
        received,
        frozenset(modalities),
        frozenset(aes),
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20200229", D(2020, 2, 29)),
        ("2020.02.29", D(2020, 2, 29)),
        ("20190229", None),
        ("", None),
        ("2020", None),
        ("abcdefgh", None),
    ],
)
def test_parse_da(value: str, expected: dt.date | None) -> None:
    assert parse_da(value) == expected


@pytest.mark.parametrize(
    ("start", "years", "expected"),
    [
        (D(2020, 2, 29), 1, D(2021, 2, 28)),
        (D(2020, 2, 29), 4, D(2024, 2, 29)),
        (D(2020, 1, 10), 10, D(2030, 1, 10)),
        (D(9990, 1, 1), 100, FOREVER),
    ],
)
def test_add_years(start: dt.date, years: int, expected: dt.date) -> None:
    assert add_years(start, years) == expected


@pytest.mark.parametrize(
    ("birth", "day", "age"),
    [
        (D(2010, 5, 20), D(2028, 5, 19), 17),
        (D(2010, 5, 20), D(2028, 5, 20), 18),
        (D(2008, 2, 29), D(2026, 2, 28), 17),
        (D(2008, 2, 29), D(2026, 3, 1), 18),
    ],
)
def test_age_on(birth: dt.date, day: dt.date, age: int) -> None:
    assert age_on(birth, day) == age


@pytest.mark.parametrize(
    ("rule", "f", "expected"),
    [
        (CHILDREN, facts(birth="20100101"), True),  # 10 years old
        (CHILDREN, facts(birth="20020110"), False),  # 18 on the study date: adult
        (CHILDREN, facts(birth="20020111"), True),  # 18 tomorrow: still a child
        (CHILDREN, facts(birth=""), True),  # age unknown: a rule on age applies
        (CHILDREN, facts(study="", birth="20100101"), True),  # no study date: age unknown
        (ADULTS, facts(), True),
        (MAMMO, facts(modalities=("CT",)), False),
        (MAMMO, facts(modalities=("MG", "SR")), True),
        (CT01, facts(aes=("MR02",)), False),
        (CT01, facts(aes=("MR02", "CT01")), True),
        (RuleAge := RetentionRule("old", min_patient_age_years=65, years=1), facts(), False),
        (RuleAge, facts(birth="19500101"), True),
    ],
)
def test_rule_matching(rule: RetentionRule, f: StudyFacts, expected: bool) -> None:
    assert matches(rule, f) is expected


@pytest.mark.parametrize(
    ("rules", "f", "until", "rule"),
    [
        ([], facts(), None, ""),  # no rule: no minimum retention
        ([ADULTS], facts(), D(2030, 1, 10), "adults"),
        # a child born 2010: ten years from 2020 (2030) < age 28 (2038)
        (RULES, facts(birth="20100101"), D(2038, 1, 1), "children"),
        # a 17-year-old: 28 comes sooner than ten years: the later date wins
        (RULES, facts(birth="20021231"), D(2030, 12, 31), "children"),
        (RULES, facts(birth="20021231", study="20200110"), D(2030, 12, 31), "children"),
        # mammography keeps longer than the adults' rule
        (RULES, facts(modalities=("MG",)), D(2035, 1, 10), "mammo"),
        # no birth date: the children's rule applies and cannot end
        (RULES, facts(birth=""), FOREVER, "children"),
        # no study date: years count from reception
        ([ADULTS], facts(study=""), D(2030, 1, 12), "adults"),
    ],
)
def test_retention_is_the_latest_matching_rule(
    rules: list[RetentionRule], f: StudyFacts, until: dt.date | None, rule: str
) -> None:
    r = retention(rules, f)
    assert (r.until, r.rule) == (until, rule)


TODAY = D(2026, 6, 1)
KEPT = Retention(D(2030, 1, 10), "adults", "10 years from the study date")
OVER = Retention(D(2025, 1, 10), "adults", "10 years from the study date")
NONE = Retention(None)


@pytest.mark.parametrize(
    ("ret", "holds", "override", "admin", "reason", "allowed", "says"),
    [
        (NONE, [], False, False, "", True, ""),
        (OVER, [], False, False, "", True, ""),
        (KEPT, [], False, True, "", False, "--override --reason"),
        (KEPT, [], True, False, "wrong patient", False, "only an admin"),
        (KEPT, [], True, True, "  ", False, "needs a reason"),
        (KEPT, [], True, True, "wrong patient", True, "override of retention"),
        (Retention(FOREVER, "children", "x"), [], False, True, "", False, "indefinitely"),
        # a legal hold blocks everything, an admin's override too, retention or not
        (NONE, ["hold 3: litigation"], False, True, "", False, "legal hold"),
        (KEPT, ["hold 3: litigation"], True, True, "wrong patient", False, "legal hold"),
    ],
)
def test_may_delete(
    ret: Retention,
    holds: list[str],
    override: bool,
    admin: bool,
    reason: str,
    allowed: bool,
    says: str,
) -> None:
    d = may_delete(ret, TODAY, holds=holds, override=override, admin=admin, reason=reason)
    assert d.allowed is allowed
    assert says in d.reason
    assert d.override_used is (allowed and ret.active(TODAY))


@pytest.mark.parametrize(
    ("ret", "day", "active", "expired"),
    [
        (KEPT, D(2030, 1, 9), True, False),
        (KEPT, D(2030, 1, 10), False, True),  # kept through the day before `until`
        (NONE, TODAY, False, False),  # no rule: nothing to expire
        (Retention(FOREVER, "children"), D(9999, 1, 1), True, False),
    ],
)
def test_active_and_expired(ret: Retention, day: dt.date, active: bool, expired: bool) -> None:
    assert (ret.active(day), ret.expired(day)) == (active, expired)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "a"}, r"retention\.rules\[0\]: set years"),
        ({"name": "a", "years": 1, "min_patient_age_years": 18, "max_patient_age_years": 18},
         r"max_patient_age_years: must be > 18"),
        ({"name": "a", "years": 1, "calling_aes": ["BAD AE TITLE TOO LONG"]}, r"calling_aes"),
        ({"name": "a", "years": -1}, r"years: must be >= 0"),
    ],
)  # fmt: skip
def test_rules_are_validated_with_their_key(rule: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"retention": {"rules": [rule]}})


def test_duplicate_rule_names_refused() -> None:
    rules = [{"name": "a", "years": 1}, {"name": "a", "years": 2}]
    with pytest.raises(ConfigError, match=r"retention\.rules\[1\]\.name: duplicate"):
        parse_config({"retention": {"rules": rules}})
