"""Retention rules and legal holds as pure decisions: which rule keeps a study, until when, and
whether a deletion may go ahead. No I/O: the facts of a study come from the caller (the edge
index), the clock is a parameter, so every rule is tested from tables (tests/test_retention.py).

A rule (`[[retention.rules]]`) matches a study when every criterion it sets matches: one of its
modalities is in the study, one of its calling AE titles sent an instance of it, and the
patient's age at the study date is within `[min_patient_age_years, max_patient_age_years)`.
A matching rule keeps the study at least `years` after the study date and, with
`until_patient_age_years`, until the patient reaches that age; the study is kept until the
latest date of all matching rules. A study no rule matches has no minimum retention (it may be
deleted, and it never expires: `auto_purge` deletes only studies whose retention ran out).

Unknown facts keep more, never less: a rule that matches on age matches a study whose age
cannot be computed (no birth date or study date), and a rule that keeps until an age keeps a
study without a birth date indefinitely. A study without a study date counts from the day it
was received.

A legal hold blocks every deletion, expiry and override; an override (admin, with a reason)
lifts retention only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from shared.config import RetentionRule

FOREVER = dt.date.max


@dataclass(frozen=True)
class StudyFacts:
    """What retention looks at in one study."""

    study_uid: str
    study_date: dt.date | None
    birth_date: dt.date | None
    received: dt.date
    modalities: frozenset[str] = frozenset()
    calling_aes: frozenset[str] = frozenset()

    @property
    def start(self) -> dt.date:
        """Where `years` count from: the study date, else the day it was received."""
        return self.study_date or self.received

    @property
    def age_years(self) -> int | None:
        """The patient's age in whole years at the study date; None when unknown."""
        if self.birth_date is None or self.study_date is None:
            return None
        return age_on(self.birth_date, self.study_date)


@dataclass(frozen=True)
class Retention:
    """Until when a study must be kept, and which rule says so ("" when none matched)."""

    until: dt.date | None  # None: no rule matched (no minimum); FOREVER: indefinitely
    rule: str = ""
    why: str = ""

    def active(self, today: dt.date) -> bool:
        """Still under retention on `today` (the last day kept is `until - 1`)."""
        return self.until is not None and today < self.until

    def expired(self, today: dt.date) -> bool:
        """A rule matched and its period is over: what `auto_purge` deletes."""
        return self.until is not None and self.until != FOREVER and today >= self.until


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # why not (one line, shown to the operator), or what was overridden
    override_used: bool = False


def parse_da(value: str) -> dt.date | None:
    """A DICOM DA (`YYYYMMDD`, also the old `YYYY.MM.DD`); None when empty or invalid."""
    v = value.strip().replace(".", "")
    if len(v) != 8 or not v.isdigit():
        return None
    try:
        return dt.date(int(v[:4]), int(v[4:6]), int(v[6:]))
    except ValueError:
        return None


def add_years(d: dt.date, years: int) -> dt.date:
    """`d` plus whole years; 29 February becomes 28 February in a common year."""
    year = d.year + years
    if year > dt.MAXYEAR:
        return FOREVER
    try:
        return d.replace(year=year)
    except ValueError:
        return d.replace(year=year, day=28)


def age_on(birth: dt.date, day: dt.date) -> int:
    """Whole years between `birth` and `day` (a birthday counts on its day)."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def matches(rule: RetentionRule, f: StudyFacts) -> bool:
    if rule.modalities and not f.modalities & set(rule.modalities):
        return False
    if rule.calling_aes and not f.calling_aes & set(rule.calling_aes):
        return False
    ranged = rule.min_patient_age_years > 0 or rule.max_patient_age_years > 0
    age = f.age_years
    if ranged and age is not None:
        if age < rule.min_patient_age_years:
            return False
        if rule.max_patient_age_years > 0 and age >= rule.max_patient_age_years:
            return False
    return True  # unknown age: a rule on age applies (keeps more, never less)


def rule_until(rule: RetentionRule, f: StudyFacts) -> tuple[dt.date, str]:
    """The date a matching rule keeps the study until, and why (for the report)."""
    until = add_years(f.start, rule.years)
    why = f"{rule.years} years from {'the study date' if f.study_date else 'reception'}"
    if rule.until_patient_age_years > 0:
        if f.birth_date is None:
            return FOREVER, f"until age {rule.until_patient_age_years}, birth date unknown"
        by_age = add_years(f.birth_date, rule.until_patient_age_years)
        if by_age > until:
            until, why = by_age, f"until age {rule.until_patient_age_years}"
    return until, why


def retention(rules: list[RetentionRule], f: StudyFacts) -> Retention:
    """The latest keep-until date of every matching rule (the first rule wins a tie)."""
    best = Retention(None)
    for rule in rules:
        if not matches(rule, f):
            continue
        until, why = rule_until(rule, f)
        if best.until is None or until > best.until:
            best = Retention(until, rule.name, why)
    return best


def may_delete(
    ret: Retention,
    today: dt.date,
    *,
    holds: list[str],
    override: bool = False,
    admin: bool = False,
    reason: str = "",
) -> Decision:
    """Whether a study (or part of it) may be deleted now. `holds`: descriptions of the legal
    holds in force on it (none: []); an override needs an admin and a reason, and never lifts
    a hold."""
    if holds:
        return Decision(False, f"under legal hold ({'; '.join(holds)}): release it first")
    if not ret.active(today):
        return Decision(True, "")
    kept = (
        "indefinitely" if ret.until == FOREVER else f"until {ret.until.isoformat()}"  # type: ignore[union-attr]
    )
    under = f"under retention {kept} (rule {ret.rule!r}: {ret.why})"
    if not override:
        return Decision(False, f"{under}; an admin may delete it with --override --reason")
    if not admin:
        return Decision(False, f"{under}; only an admin may override retention")
    if not reason.strip():
        return Decision(False, f"{under}; an override needs a reason")
    return Decision(True, f"override of retention: {under}", override_used=True)
