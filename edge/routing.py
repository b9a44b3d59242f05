"""Routing rules: which instance goes where. Pure decisions, no I/O.

A rule from `[[routes]]` matches an ingested instance on its calling AE, Modality, SOP Class,
BodyPartExamined, Study/Series Description (regular expressions, searched) and a schedule
window on the time of arrival. The forwarder's queue (edge/routequeue.py) turns each match
into one job per destination; keeping the decision here makes it testable from a table.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import datetime

from shared.config import RouteConfig
from shared.dicom import Header

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Schedule:
    """A daily window in local time, optionally on some weekdays only; may wrap midnight."""

    start_min: int
    end_min: int
    days: frozenset[int] = frozenset(range(7))  # 0 = Monday

    def contains(self, at: datetime) -> bool:
        minute = at.hour * 60 + at.minute
        day = at.weekday()
        if self.start_min == self.end_min:
            return day in self.days
        if self.start_min < self.end_min:
            return day in self.days and self.start_min <= minute < self.end_min
        # Wrapping window (22:00-06:00): the early-morning part belongs to the previous day.
        if minute >= self.start_min:
            return day in self.days
        return minute < self.end_min and (day - 1) % 7 in self.days


def parse_schedule(text: str) -> Schedule | None:
    """`HH:MM-HH:MM` or `Mon-Fri,Sun HH:MM-HH:MM`; empty means always (None)."""
    text = text.strip()
    if not text:
        return None
    days_part, _, times = text.rpartition(" ")
    start, _, end = times.partition("-")
    days: set[int] = set()
    for item in filter(None, days_part.lower().split(",")):
        first, _, last = item.partition("-")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return Schedule(
        _minutes(start), _minutes(end), frozenset(days) if days else frozenset(range(7))
    )


def _minutes(hhmm: str) -> int:
    h, _, m = hhmm.partition(":")
    return int(h) * 60 + int(m)


def _choices(value: str) -> frozenset[str]:
    """`CT,MR` or `CT\\MR` -> {"CT", "MR"}, upper-cased; empty -> any."""
    return frozenset(v.strip().upper() for v in re.split(r"[,\\]", value) if v.strip())


@dataclass(frozen=True)
class Rule:
    name: str
    destinations: tuple[str, ...]
    calling_aes: frozenset[str] = frozenset()
    modalities: frozenset[str] = frozenset()
    sop_classes: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()
    study_description: re.Pattern[str] | None = None
    series_description: re.Pattern[str] | None = None
    schedule: Schedule | None = None
    stable_after_s: float = 0.0
    max_attempts: int = 10

    @classmethod
    def from_config(cls, rc: RouteConfig) -> Rule:
        return cls(
            name=rc.name,
            destinations=tuple(rc.destinations),
            calling_aes=_choices(rc.calling_ae),
            modalities=_choices(rc.modality),
            sop_classes=_choices(rc.sop_class_uid),
            body_parts=_choices(rc.body_part),
            study_description=re.compile(rc.study_description) if rc.study_description else None,
            series_description=re.compile(rc.series_description) if rc.series_description else None,
            schedule=parse_schedule(rc.schedule),
            stable_after_s=rc.stable_after_s,
            max_attempts=rc.max_attempts,
        )

    def matches(self, header: Header, calling_ae: str, at: datetime) -> bool:
        """Every condition that is set must hold; an unset condition matches anything."""
        if self.calling_aes and calling_ae.strip().upper() not in self.calling_aes:
            return False
        if self.modalities and header.modality.upper() not in self.modalities:
            return False
        if self.sop_classes and header.sop_class_uid.upper() not in self.sop_classes:
            return False
        if self.body_parts and header.body_part.upper() not in self.body_parts:
            return False
        if self.study_description and not self.study_description.search(header.study_description):
            return False
        if self.series_description and not self.series_description.search(
            header.series_description
        ):
            return False
        return self.schedule is None or self.schedule.contains(at)


def rules_from_config(routes: list[RouteConfig]) -> list[Rule]:
    return [Rule.from_config(rc) for rc in routes]


def matching_rules(rules: list[Rule], header: Header, calling_ae: str, at: datetime) -> list[Rule]:
    return [r for r in rules if r.destinations and r.matches(header, calling_ae, at)]


def backoff_s(
    attempts: int, initial_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Capped exponential backoff with full jitter in [50%, 100%] so peers are not stampeded."""
    base = min(max_s, initial_s * (2 ** max(0, attempts - 1)))
    jitter = (rng or random).uniform(0.5, 1.0)
    return base * jitter
