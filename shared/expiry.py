"""Retention facts of the index's studies: what `shared.retention` decides on, read in one
query, for one study (a deletion's check) or all of them (`hpacs-edge retention report`,
`retention.auto_purge`)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass

from shared.config import RetentionConfig
from shared.retention import FOREVER, Retention, StudyFacts, parse_da, retention

# Holds (shared/deletion.py) in force on the study `s`, directly or through its patient.
ACTIVE_HOLD_SQL = (
    "SELECT 1 FROM holds h WHERE h.released_at IS NULL AND ((h.kind = 'study' AND "
    "h.value = s.study_uid) OR (h.kind = 'patient' AND h.value = s.patient_id AND "
    "s.patient_id <> ''))"
)
_FACTS = (
    "SELECT s.id, s.study_uid, s.study_date, s.patient_birth_date, s.created_at, "
    "s.num_instances, "
    "(SELECT group_concat(DISTINCT modality) FROM series x WHERE x.study_id = s.id "
    "AND x.modality <> '') AS modalities, "
    "(SELECT group_concat(DISTINCT calling_ae) FROM instances x WHERE x.study_id = s.id "
    "AND x.calling_ae <> '') AS calling_aes, "
    f"EXISTS ({ACTIVE_HOLD_SQL}) AS held "
    "FROM studies s"
)


def _facts(r: sqlite3.Row) -> StudyFacts:
    return StudyFacts(
        study_uid=r["study_uid"],
        study_date=parse_da(r["study_date"]),
        birth_date=parse_da(r["patient_birth_date"]),
        received=dt.datetime.fromtimestamp(r["created_at"], dt.UTC).date(),
        modalities=frozenset((r["modalities"] or "").split(",")) - {""},
        calling_aes=frozenset((r["calling_aes"] or "").split(",")) - {""},
    )


def study_facts(conn: sqlite3.Connection, study_id: int) -> StudyFacts:
    """What retention looks at in one study (its visible and deleted instances alike)."""
    return _facts(conn.execute(_FACTS + " WHERE s.id = ?", (study_id,)).fetchone())


def study_retention(conn: sqlite3.Connection, study_id: int, cfg: RetentionConfig) -> Retention:
    return retention(cfg.rules, study_facts(conn, study_id))


@dataclass(frozen=True)
class Line:
    """One study of the report."""

    study_uid: str
    study_date: str
    modalities: str
    instances: int
    retention: Retention
    held: bool

    def status(self, today: dt.date) -> str:
        if self.held:
            return "held"
        if self.retention.until is None:
            return "no-rule"
        return "expired" if self.retention.expired(today) else "kept"

    def until(self) -> str:
        u = self.retention.until
        return "-" if u is None else ("forever" if u == FOREVER else u.isoformat())


def report(conn: sqlite3.Connection, cfg: RetentionConfig) -> list[Line]:
    """Every study with visible instances, soonest expiry first (no rule last)."""
    lines = [
        Line(
            study_uid=r["study_uid"],
            study_date=r["study_date"],
            modalities=",".join(sorted(_facts(r).modalities)),
            instances=int(r["num_instances"]),
            retention=retention(cfg.rules, _facts(r)),
            held=bool(r["held"]),
        )
        for r in conn.execute(_FACTS + " WHERE s.num_instances > 0")
    ]
    return sorted(lines, key=lambda x: (x.retention.until or dt.date.max, x.study_uid))


def expired(conn: sqlite3.Connection, cfg: RetentionConfig, today: dt.date) -> list[Line]:
    """Studies whose retention ran out and that no hold covers: what auto_purge deletes."""
    return [x for x in report(conn, cfg) if x.status(today) == "expired"]
