"""UID and AE title validation: pure checks applied before a value touches a path or a query.

Whole-value matches (`fullmatch`): `$` would also match before a final newline, and a UID
`1.2.3\n` must be refused, not stored under `1.2.3` while its file keeps the newline.
"""

from __future__ import annotations

import re

_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_AE_RE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # default repertoire without backslash


def is_valid_uid(value: object) -> bool:
    """A DICOM UID: digits and dots, no leading zero in a component, at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID_RE.fullmatch(value))


def is_valid_ae_title(value: object) -> bool:
    """An AE title: 1-16 characters of the default repertoire, not only spaces, no backslash."""
    return isinstance(value, str) and bool(_AE_RE.fullmatch(value)) and value.strip() != ""
