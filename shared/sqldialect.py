"""SQL dialects: how `shared.matching` predicates and bound parameters are written for SQLite
and PostgreSQL. Pure; no driver is imported here.

- SQLite: `?` placeholders; wildcard patterns as GLOB (case-sensitive, `[` escaped).
- PostgreSQL: `%s` placeholders; wildcard patterns as LIKE with `%`, `_` and `\\` escaped.
  Catalog text columns are declared `COLLATE "C"`, so a plain btree serves both the prefix
  ranges and LIKE prefixes (what `text_pattern_ops` gives under another collation) and rows
  sort byte-wise, as SQLite's BINARY collation sorts them: both backends order alike.
Both: a `Prefix` is `col >= prefix AND col < successor(prefix)`, an index range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.matching import (
    And,
    Eq,
    Exists,
    In,
    Never,
    Or,
    Pattern,
    Predicate,
    Prefix,
    Range,
    successor,
)


@dataclass(frozen=True)
class Dialect:
    name: str
    param: str  # the placeholder of one bound value

    def placeholders(self, n: int) -> str:
        return ", ".join([self.param] * n)

    def render(self, pred: Predicate | None, params: list[Any]) -> str:
        """The WHERE term of a predicate ("" for a universal match); values go to `params`."""
        if pred is None:
            return ""
        p = self.param
        if isinstance(pred, Eq):
            params.append(pred.value)
            return f"{pred.col} = {p}"
        if isinstance(pred, In):
            params.extend(pred.values)
            return f"{pred.col} IN ({self.placeholders(len(pred.values))})"
        if isinstance(pred, Range):
            conds = [f"{pred.col} >= {p}" if pred.lower else f"{pred.col} > ''"]
            if pred.lower:
                params.append(pred.lower)
            if pred.upper is not None:
                params.append(pred.upper)
                conds.append(f"{pred.col} <= {p}")
            return " AND ".join(conds)
        if isinstance(pred, Prefix):
            params.extend((pred.prefix, successor(pred.prefix)))
            return f"{pred.col} >= {p} AND {pred.col} < {p}"
        if isinstance(pred, Pattern):
            params.append(self.pattern(pred.pattern))
            return f"{pred.col} {'GLOB' if self.name == 'sqlite' else 'LIKE'} {p}"
        if isinstance(pred, And):
            return " AND ".join(self.render(t, params) for t in pred.terms)
        if isinstance(pred, Or):
            return "(" + " OR ".join(self.render(t, params) for t in pred.terms) + ")"
        if isinstance(pred, Exists):
            inner = self.render(pred.term, params)
            return f"EXISTS (SELECT 1 FROM {pred.source} WHERE {pred.link} AND {inner})"
        if isinstance(pred, Never):
            return "1 = 0"
        raise TypeError(f"not a predicate: {pred!r}")  # pragma: no cover

    def join_distinct(self, expr: str, source: str) -> str:
        """A scalar subquery: the distinct values of `expr` over `source` (`FROM`'s text),
        sorted and joined with `\\` (a DICOM multi-value), NULL when there are none."""
        if self.name == "sqlite":
            return (
                f"(SELECT group_concat(v, '\\') FROM"
                f" (SELECT DISTINCT {expr} AS v FROM {source} ORDER BY v))"
            )
        return f"(SELECT string_agg(DISTINCT {expr}, '\\' ORDER BY {expr}) FROM {source})"

    def pattern(self, value: str) -> str:
        """A DICOM wildcard pattern in this dialect's pattern language."""
        if self.name == "sqlite":
            return to_glob(value)
        return to_like(value)


def to_glob(value: str) -> str:
    """A DICOM wildcard pattern as a GLOB pattern: `*`/`?` keep their meaning, `[` is escaped."""
    return "".join("[[]" if ch == "[" else ch for ch in value)


_LIKE = {"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}


def to_like(value: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern (default escape `\\`): `%`, `_`, `\\` literal."""
    return "".join(_LIKE.get(ch, ch) for ch in value)


SQLITE = Dialect("sqlite", "?")
POSTGRES = Dialect("postgresql", "%s")
