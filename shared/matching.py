"""DICOM attribute matching (PS3.4 C.2.2.2) as parameterised SQL terms: one set of rules.

Used by the edge's C-FIND (`edge.query`) and the cloud API's QIDO-RS (`cloud_api.qido`), which
query different index schemas but must match values the same way. Pure: each function takes
a SQL column expression, a query value and the parameter list to extend, and returns a WHERE
term ("" = universal match, nothing appended). Values never reach the SQL text.

- Single value and wildcard matching: `*` and `?` are the only special characters; every
  other one (`%`, `_`, quotes, `[`) is literal. Patterns become GLOB patterns (`[` escaped),
  and a pattern with a literal prefix also gets `col >= prefix AND col < successor(prefix)`,
  an index range that does not depend on SQLite's LIKE optimisation (`SMITH*` is a range scan
  only, at any index size).
- Person names are matched on an upper-cased column (`person_name` gives the query form).
- Date/time ranges `A-B`, `A-`, `-B`; a range never matches an empty (unknown) value; a TM
  upper bound is a prefix (`-12` includes 12:59:59.999).
- UID lists (backslash-separated; QIDO also allows commas) become `IN (...)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.errors import BadRequest
from shared.rows import normalize_name
from shared.uids import is_valid_uid

# A high sentinel for range upper bounds: above every digit, '.', '+' and '-' in DA/TM/DT.
HIGH = "~"


def person_name(value: str) -> str:
    """A PN query value in the form names are stored for matching (upper case)."""
    return normalize_name(value)


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


def any_of(conds: Sequence[str]) -> str:
    """Any of the values matches; one universal value (empty term) makes the whole universal."""
    if not conds or not all(conds):
        return ""
    return conds[0] if len(conds) == 1 else "(" + " OR ".join(conds) + ")"


def one_of(col: str, values: Sequence[Any], params: list[Any]) -> str:
    """Single value or list matching by equality (UIDs, integers, codes)."""
    params.extend(values)
    if len(values) == 1:
        return f"{col} = ?"
    return f"{col} IN ({', '.join('?' * len(values))})"


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
        return int(value)
    except ValueError as exc:
        raise BadRequest(f"{name}: not an integer: {value[:32]!r}") from exc


def string(col: str, value: str, params: list[Any]) -> str:
    """Single value or wildcard matching; every character but `*` and `?` is literal."""
    if value and value.strip("*") == "":
        return ""  # "*" alone is universal (an empty value in a list matches empty values)
    cut = min((i for i, ch in enumerate(value) if ch in "*?"), default=-1)
    if cut < 0:
        params.append(value)
        return f"{col} = ?"
    prefix = value[:cut]
    conds: list[str] = []
    if prefix:
        params.extend((prefix, successor(prefix)))
        conds.append(f"{col} >= ? AND {col} < ?")
    if value != prefix + "*":
        params.append(to_glob(value))
        conds.append(f"{col} GLOB ?")
    return " AND ".join(conds)


def to_glob(value: str) -> str:
    """A DICOM wildcard pattern as a GLOB pattern: `*`/`?` keep their meaning, `[` is escaped."""
    return "".join("[[]" if ch == "[" else ch for ch in value)


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


def date_time(col: str, value: str, kind: str, name: str, params: list[Any]) -> str:
    """Date (`da`) or time (`tm`) matching: `A-B`, `A-`, `-B`, or a single value.

    Values are checked (digits, `.`, `:`) so that text cannot pose as a range; the error
    names the attribute, never the value (it may be PHI).
    """
    if value == "":
        return ""
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
            params.append(lower)
            return f"{col} = ?"
    conds = [f"{col} >= ?" if lower else f"{col} > ''"]
    if lower:
        params.append(lower)
    if upper:
        # TM "12" as an upper bound includes 12:59:59.999: compare with a high sentinel.
        params.append(upper + HIGH if kind == "tm" else upper)
        conds.append(f"{col} <= ?")
    return " AND ".join(conds)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(value).strip()
