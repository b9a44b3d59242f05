"""Routing rules are pure: a table of (rule, instance, time) -> match."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import pytest

from edge.routing import Rule, backoff_s, matching_rules, parse_schedule
from shared.config import ConfigError, RouteConfig, parse_config
from shared.dicom import Header

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
# 2024-01-15 was a Monday
MON_10 = datetime(2024, 1, 15, 10, 0)
MON_23 = datetime(2024, 1, 15, 23, 30)
TUE_03 = datetime(2024, 1, 16, 3, 0)
SAT_10 = datetime(2024, 1, 20, 10, 0)
SUN_03 = datetime(2024, 1, 21, 3, 0)


def header(**kw: Any) -> Header:
    base: dict[str, Any] = {
        "sop_instance_uid": "1.2.3.4",
        "sop_class_uid": CT,
        "study_uid": "1.2.3",
        "series_uid": "1.2.3.1",
        "transfer_syntax": "1.2.840.10008.1.2.1",
        "modality": "CT",
        "body_part": "CHEST",
        "study_description": "CT CHEST W CONTRAST",
        "series_description": "AXIAL 1mm",
    }
    base.update(kw)
    return Header(**base)


def rule(**kw: Any) -> Rule:
    kw.setdefault("name", "r")
    kw.setdefault("destinations", ["DEST"])
    return Rule.from_config(RouteConfig(**kw))


CASES = [
    # (rule kwargs, header kwargs, calling AE, when, expected)
    ({}, {}, "CT01", MON_10, True),
    ({"modality": "CT"}, {}, "CT01", MON_10, True),
    ({"modality": "ct"}, {}, "CT01", MON_10, True),
    ({"modality": "MR"}, {}, "CT01", MON_10, False),
    ({"modality": "MR,CT"}, {}, "CT01", MON_10, True),
    ({"modality": "MR\\CT"}, {}, "CT01", MON_10, True),
    ({"calling_ae": "CT01"}, {}, "CT01", MON_10, True),
    ({"calling_ae": "CT01"}, {}, "CT02", MON_10, False),
    ({"calling_ae": "CT01,CT02"}, {}, "CT02", MON_10, True),
    ({"sop_class_uid": MR}, {}, "CT01", MON_10, False),
    ({"sop_class_uid": CT}, {}, "CT01", MON_10, True),
    ({"body_part": "chest"}, {}, "CT01", MON_10, True),
    ({"body_part": "HEAD"}, {}, "CT01", MON_10, False),
    ({"body_part": "HEAD"}, {"body_part": ""}, "CT01", MON_10, False),
    ({"study_description": "CHEST"}, {}, "CT01", MON_10, True),
    ({"study_description": "^CHEST"}, {}, "CT01", MON_10, False),
    ({"study_description": "(?i)contrast"}, {}, "CT01", MON_10, True),
    ({"series_description": r"\b1mm$"}, {}, "CT01", MON_10, True),
    ({"series_description": "5mm"}, {}, "CT01", MON_10, False),
    ({"modality": "CT", "body_part": "HEAD"}, {}, "CT01", MON_10, False),
    ({"schedule": "08:00-18:00"}, {}, "CT01", MON_10, True),
    ({"schedule": "08:00-18:00"}, {}, "CT01", MON_23, False),
    ({"schedule": "22:00-06:00"}, {}, "CT01", MON_23, True),
    ({"schedule": "22:00-06:00"}, {}, "CT01", TUE_03, True),
    ({"schedule": "22:00-06:00"}, {}, "CT01", MON_10, False),
    ({"schedule": "Mon-Fri 08:00-18:00"}, {}, "CT01", MON_10, True),
    ({"schedule": "Mon-Fri 08:00-18:00"}, {}, "CT01", SAT_10, False),
    ({"schedule": "sat,sun 00:00-24:00"}, {}, "CT01", SAT_10, True),
    ({"schedule": "sat,sun 00:00-24:00"}, {}, "CT01", MON_10, False),
    # Friday night's window reaches into Saturday morning, Saturday's not into Sunday's
    ({"schedule": "Fri 22:00-06:00"}, {}, "CT01", datetime(2024, 1, 20, 3, 0), True),
    ({"schedule": "Fri 22:00-06:00"}, {}, "CT01", SUN_03, False),
    ({"schedule": "Fri-Mon 20:00-23:00"}, {}, "CT01", datetime(2024, 1, 21, 21, 0), True),
]


@pytest.mark.parametrize(("rule_kw", "header_kw", "calling_ae", "when", "expected"), CASES)
def test_rule_matches(
    rule_kw: dict[str, Any],
    header_kw: dict[str, Any],
    calling_ae: str,
    when: datetime,
    expected: bool,
) -> None:
    assert rule(**rule_kw).matches(header(**header_kw), calling_ae, when) is expected


def test_matching_rules_skips_rules_without_destinations() -> None:
    rules = [rule(name="a"), rule(name="b", destinations=[]), rule(name="c", modality="MR")]
    assert [r.name for r in matching_rules(rules, header(), "CT01", MON_10)] == ["a"]


@pytest.mark.parametrize(
    "text", ["8:00-9:00", "Mon-Xyz 01:00-02:00", "25:00-26:00", "always", "08:00"]
)
def test_bad_schedule_is_a_config_error_naming_the_key(text: str) -> None:
    data = {
        "nodes": [{"ae_title": "DEST", "host": "127.0.0.1", "port": 104}],
        "routes": [{"name": "r", "destinations": ["DEST"], "schedule": text}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert err.value.key == "routes[0].schedule"


def test_parse_schedule_days_wrap_the_week() -> None:
    s = parse_schedule("Sat-Mon 01:00-02:00")
    assert s is not None and s.days == frozenset({5, 6, 0})
    assert parse_schedule("") is None


@pytest.mark.parametrize(
    ("attempts", "low", "high"),
    [(1, 2.5, 5.0), (2, 5.0, 10.0), (3, 10.0, 20.0), (10, 30.0, 60.0), (50, 30.0, 60.0)],
)
def test_backoff_is_capped_and_jittered(attempts: int, low: float, high: float) -> None:
    rng = random.Random(1)
    for _ in range(20):
        assert low <= backoff_s(attempts, 5.0, 60.0, rng) <= high
