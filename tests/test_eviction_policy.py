"""The pure eviction policy, table-driven."""

from __future__ import annotations

import pytest

from shared.eviction import StudyUsage, Watermark, parse_watermark, plan_eviction

NOW = 1_000_000.0
HOUR = 3600.0


def st(
    sid: int,
    size: int = 100,
    age_h: float = 10,
    pinned: bool = False,
    unsynced: int = 0,
    updated_age_h: float | None = None,
) -> StudyUsage:
    updated = NOW - (updated_age_h if updated_age_h is not None else age_h) * HOUR
    return StudyUsage(sid, size, NOW - age_h * HOUR, updated, pinned, unsynced)


CASES = [
    # name, studies, usage, high, low, expected victims, expected skipped (non-zero only)
    ("below high: nothing", [st(1), st(2)], 900, 900, 500, [], {}),
    (
        "LRU first down to low",
        [st(1, age_h=5), st(2, age_h=9), st(3, age_h=7)],
        1000,
        900,
        800,
        [2, 3],
        {},
    ),
    ("stops once at or below low", [st(1, 300, 9), st(2, 300, 8)], 1000, 900, 700, [1], {}),
    (
        "pinned never",
        [st(1, age_h=9, pinned=True), st(2, age_h=8)],
        1000,
        900,
        850,
        [2],
        {"pinned": 1},
    ),
    ("young never", [st(1, age_h=0.5), st(2, age_h=8)], 1000, 900, 850, [2], {"young": 1}),
    (
        "still receiving counts as young",
        [st(1, age_h=9, updated_age_h=0.1), st(2, age_h=8)],
        1000,
        900,
        850,
        [2],
        {"young": 1},
    ),
    (
        "any unsynced instance blocks the study",
        [st(1, age_h=9, unsynced=1), st(2, age_h=8)],
        1000,
        900,
        850,
        [2],
        {"unsynced": 1},
    ),
    (
        "nothing eligible: no victims",
        [st(1, pinned=True), st(2, unsynced=3), st(3, age_h=0)],
        1000,
        900,
        100,
        [],
        {"pinned": 1, "unsynced": 1, "young": 1},
    ),
    (
        "already evicted studies ignored",
        [st(1, size=0, age_h=20), st(2, age_h=8)],
        1000,
        900,
        850,
        [2],
        {},
    ),
    ("ties broken by id", [st(2, age_h=8), st(1, age_h=8)], 1000, 900, 850, [1, 2], {}),
]


@pytest.mark.parametrize(
    ("studies", "usage", "high", "low", "victims", "skipped"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan_eviction(
    studies: list[StudyUsage],
    usage: int,
    high: int,
    low: int,
    victims: list[int],
    skipped: dict[str, int],
) -> None:
    plan = plan_eviction(studies, usage, high, low, NOW, min_age_s=HOUR)
    assert plan.victims == victims
    assert {k: v for k, v in plan.skipped.items() if v} == skipped
    sizes = {s.study_id: s.local_bytes for s in studies}
    assert plan.freed_bytes == sum(sizes[v] for v in victims)
    assert plan.usage_after == usage - plan.freed_bytes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90%", Watermark(90, True)),
        ("20GB", Watermark(20e9, False)),
        ("512MiB", Watermark(512 * 1024**2, False)),
        ("1000", Watermark(1000, False)),
        (" 1.5 tb ", Watermark(1.5e12, False)),
    ],
)
def test_parse_watermark(text: str, expected: Watermark) -> None:
    assert parse_watermark(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "10XB", "0%", "101%", "-5GB"])
def test_parse_watermark_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_watermark(text)


def test_percent_watermark_resolves_against_disk() -> None:
    assert parse_watermark("75%").bytes_of(1000) == 750
    assert parse_watermark("2KB").bytes_of(1000) == 2000
