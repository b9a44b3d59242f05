"""DICOM attribute matching (PS3.4 C.2.2.2) as dialect-neutral predicates: one set of rules.

Used by the edge's C-FIND (`edge.query`) and the cloud catalog's searches (QIDO-RS), which
query different schemas and SQL dialects but must match values the same way. Pure: each
function takes a column expression (schema text chosen by the caller, never a value) and a
query value and returns a small predicate (`None` = universal match); `shared.sqldialect`
renders predicates as SQL for SQLite or PostgreSQL with bound parameters, so values never
reach the SQL text.

- Single value and wildcard matching: `*` and `?` are the only special characters; every
  other one (`%`, `_`, quotes, `[`, `\\`) is literal. A pattern with a literal prefix also
  gets a `Prefix` term (`col >= prefix AND col < successor(prefix)`), an index range that does
  not depend on a database's LIKE optimisation (`SMITH*` is a range scan only, at any size).
- Person names (and the other case-insensitive attributes) are matched on an upper-cased
  column (`person_name` gives the query form).
- Date/time ranges `A-B`, `A-`, `-B`; a range never matches an empty (unknown) value; a TM
  upper bound is a prefix (`-12` includes 12:59:59.999).
- UID lists (backslash-separated; QIDO also allows commas) become `In` lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.attributes import normalize
from shared.errors import BadRequest
from shared.uids import is_valid_uid

# A high sentinel for range upper bounds: above every digit, '.', '+' and '-' in DA/TM/DT.
HIGH = "~"


# ---- predicates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Eq:
    col: str
    value: Any


@dataclass(frozen=True)
class In:
    col: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    """`lower <= col <= upper`; a missing lower bound still excludes empty (unknown) values."""

    col: str
    lower: str | None
    upper: str | None


@dataclass(frozen=True)
class Prefix:
    """Every value starting with `prefix`: an index range in any dialect."""

    col: str
    prefix: str


@dataclass(frozen=True)
class Pattern:
    """A DICOM wildcard pattern: `*` any run, `?` one character, everything else literal."""

    col: str
    pattern: str


@dataclass(frozen=True)
class And:
    terms: tuple[Predicate, ...]


@dataclass(frozen=True)
class Or:
    terms: tuple[Predicate, ...]


@dataclass(frozen=True)
class Exists:
    """A row of a lower level matches: `EXISTS (SELECT 1 FROM <source> WHERE <link> AND term)`.
    `source` and `link` are schema text from the query builder, never values."""

    source: str
    link: str
    term: Predicate


@dataclass(frozen=True)
class Never:
    """Matches nothing (an empty site scope)."""


Predicate = Eq | In | Range | Prefix | Pattern | And | Or | Exists | Never


def all_of(terms: Sequence[Predicate | None]) -> Predicate | None:
    """Every term holds; universal terms (None) drop out."""
    kept = tuple(t for t in terms if t is not None)
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else And(kept)


def any_of(terms: Sequence[Predicate | None]) -> Predicate | None:
    """Any of the values matches; one universal value (None) makes the whole universal."""
    if not terms or any(t is None for t in terms):
        return None
    kept = tuple(t for t in terms if t is not None)
    return kept[0] if len(kept) == 1 else Or(kept)


def one_of(col: str, values: Sequence[Any]) -> Eq | In:
    """Single value or list matching by equality (UIDs, integers, codes)."""
    if len(values) == 1:
        return Eq(col, values[0])
    return In(col, tuple(values))


# ---- values ---------------------------------------------------------------------------------


def person_name(value: str) -> str:
    """A PN query value in the form names are stored for matching (upper case)."""
    return normalize(value)


def split_values(raw: Any, commas: bool = False) -> list[str]:
    """A query value as its list of values: pydicom multi-values or `\\`-separated text
    (and `,`-separated when `commas`, as QIDO-RS allows), each stripped of padding."""
    if raw is None:
        return []
    if isinstance(raw, list | tuple) or type(raw).__name__ == "MultiValue":
        return [_text(v) for v in raw]
    text = _text(raw)
    if commas:
        text = text.replace(",", "\\")
    return text.split("\\") if "\\" in text else [text]


def is_universal(values: Sequence[str]) -> bool:
    """No value, or only empty ones: matches everything."""
    return not values or all(v == "" for v in values)


def uids(values: Sequence[str], validate: bool = False) -> list[str]:
    """The non-empty UIDs of a list; `validate` refuses malformed ones (BadRequest)."""
    out = [u for u in values if u]
    if validate:
        bad = [u for u in out if not is_valid_uid(u)]
        if bad:
            raise BadRequest(f"not a valid UID: {bad[0][:64]!r}")
    return out


def integer(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError as exc:
        raise BadRequest(f"{name}: not an integer: {value[:32]!r}") from exc
    if not -(2**63) <= n < 2**63:
        raise BadRequest(f"{name}: out of range")
    return n


def string(col: str, value: str) -> Predicate | None:
    """Single value or wildcard matching; every character but `*` and `?` is literal."""
    if value and value.strip("*") == "":
        return None  # "*" alone is universal (an empty value in a list matches empty values)
    cut = min((i for i, ch in enumerate(value) if ch in "*?"), default=-1)
    if cut < 0:
        return Eq(col, value)
    prefix = value[:cut]
    terms: list[Predicate] = []
    if prefix:
        terms.append(Prefix(col, prefix))
    if value != prefix + "*":
        terms.append(Pattern(col, value))
    return all_of(terms)


def successor(prefix: str) -> str:
    """The smallest string greater than every string starting with prefix (UTF-8 binary order)."""
    while prefix:
        code = ord(prefix[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            return prefix[:-1] + chr(code)
        prefix = prefix[:-1]
    return "\U0010ffff"  # pragma: no cover - only for a prefix of all U+10FFFF


def date_time(col: str, value: str, kind: str, name: str) -> Predicate | None:
    """Date (`da`) or time (`tm`) matching: `A-B`, `A-`, `-B`, or a single value.

    Values are checked (digits, `.`, `:`) so that text cannot pose as a range; the error
    names the attribute, never the value (it may be PHI).
    """
    if value == "":
        return None
    if "-" in value:
        lower, _, upper = value.partition("-")
    else:
        lower = upper = value
    for part in (lower, upper):
        if part and not all(ch.isdigit() or ch in ".:" for ch in part):
            raise BadRequest(f"{name}: not a valid date/time or range")
    lower, upper = lower.replace(":", ""), upper.replace(":", "")
    if kind == "da":
        lower, upper = lower.replace(".", ""), upper.replace(".", "")
        if lower == upper and lower:
            return Eq(col, lower)
    # TM "12" as an upper bound includes 12:59:59.999: compare with a high sentinel.
    high = (upper + HIGH if kind == "tm" else upper) if upper else None
    return Range(col, lower or None, high)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(value).strip()
