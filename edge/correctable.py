"""Which attributes a correction may change, and whether a new value is well-formed (pure).

Correctable: the patient and study attributes of the attribute registry
(`shared/attributes.py`) that are stored in the index, except UIDs: PatientID,
IssuerOfPatientID, PatientName, PatientBirthDate, PatientSex, StudyDate, StudyTime,
AccessionNumber, StudyID, StudyDescription, ReferringPhysicianName. They are all top-level
elements of the objects and columns of the edge's `studies` rows, so a correction rewrites
those elements in every instance (edge/rewrite.py) and those columns in one row per study.
Series and instance attributes, UIDs and anything outside the registry are refused with the
list of what may be corrected.

Values are checked against their VR (PS3.5 6.2): one value (no backslash), no control
characters, the VR's length limit; dates YYYYMMDD, times HH[MM[SS[.F{1,6}]]], PatientSex one
of M, F, O. An empty value clears the attribute (kept as a zero-length element). Messages
name the attribute and the rule, never the value (they reach logs and the audit trail).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable

from shared import attributes
from shared.errors import BadRequest
from shared.index import NORMALISED

CORRECTABLE: dict[str, attributes.Attribute] = {
    a.keyword: a
    for a in attributes.STORED
    if a.level in (attributes.PATIENT, attributes.STUDY) and a.kind != attributes.UID
}
PATIENT_KEYWORDS = tuple(k for k, a in CORRECTABLE.items() if a.level == attributes.PATIENT)
_MAX_CHARS = {"SH": 16, "LO": 64, "CS": 16, "DA": 8, "TM": 14}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_CS = re.compile(r"[A-Z0-9 _]*")


def check_value(keyword: str, value: str) -> str:
    """The value to write (surrounding spaces removed), or BadRequest naming the problem."""
    attr = CORRECTABLE.get(keyword)
    if attr is None:
        raise BadRequest(
            f"{keyword} cannot be corrected: only the patient and study attributes "
            f"{', '.join(CORRECTABLE)} can (UIDs, series and instance attributes never)"
        )
    value = value.strip(" ")
    vr = attr.vr
    if _CONTROL.search(value) or "\\" in value:
        raise BadRequest(f"{keyword}: one value without control characters or backslashes")
    if vr == "PN":
        groups = value.split("=")
        if len(groups) > 3 or any(len(c) > 64 for g in groups for c in g.split("^")):
            raise BadRequest(
                f"{keyword}: a person name is at most 3 groups (=) of components (^) "
                "of at most 64 characters"
            )
        if any(len(g.split("^")) > 5 for g in groups):
            raise BadRequest(f"{keyword}: at most 5 components (^) per group")
    elif len(value) > _MAX_CHARS.get(vr, 64):
        raise BadRequest(f"{keyword}: at most {_MAX_CHARS.get(vr, 64)} characters ({vr})")
    if value and vr == "DA":
        try:
            datetime.datetime.strptime(value, "%Y%m%d")
        except ValueError:
            raise BadRequest(f"{keyword}: a date YYYYMMDD") from None
    if value and vr == "TM" and not _TIME.fullmatch(value):
        raise BadRequest(f"{keyword}: a time HH, HHMM, HHMMSS or HHMMSS.FFFFFF")
    if vr == "CS" and not _CS.fullmatch(value):
        raise BadRequest(f"{keyword}: upper-case letters, digits, spaces and _ only")
    if keyword == "PatientSex" and value not in ("", "M", "F", "O"):
        raise BadRequest("PatientSex: M, F, O or empty")
    return value


def parse_sets(pairs: Iterable[str]) -> dict[str, str]:
    """`KEYWORD=VALUE` arguments (CLI `--set`) -> checked changes; a keyword given twice is
    refused (which one was meant?)."""
    out: dict[str, str] = {}
    for pair in pairs:
        keyword, sep, value = pair.partition("=")
        keyword = keyword.strip()
        if not sep:
            raise BadRequest("--set needs KEYWORD=VALUE")
        if keyword in out:
            raise BadRequest(f"{keyword} is set twice")
        out[keyword] = check_value(keyword, value)
    if not out:
        raise BadRequest("nothing to change: give at least one --set KEYWORD=VALUE")
    return out


def check_changes(changes: dict[str, object]) -> dict[str, str]:
    """The console's JSON `{"KEYWORD": "value"}` -> checked changes."""
    out: dict[str, str] = {}
    for keyword, value in changes.items():
        if not isinstance(value, str):
            raise BadRequest(f"{keyword}: a string value is required")
        out[keyword] = check_value(keyword, value)
    if not out:
        raise BadRequest("nothing to change")
    return out


def columns(changes: dict[str, str]) -> dict[str, str]:
    """Index column -> value of the `studies` row, with the upper-cased copies it keeps."""
    out = {}
    for keyword, value in changes.items():
        attr = CORRECTABLE[keyword]
        out[attr.column] = value
        if keyword in NORMALISED:
            out[attr.norm_column] = attributes.normalize(value)
    return out
