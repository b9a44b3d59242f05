"""The scrub's progress as the index keeps it (settings key `scrub.progress`, JSON).

Written by the sync agent's scrub (sync/scrub.py); read by `hpacs-sync status` and by the
edge's `/metrics` at scrape time (shared/metrics.py), which never import the sync agent.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, fields

SETTING = "scrub.progress"


@dataclass
class Progress:
    """What the scrub has done; persisted as JSON in the index's settings table."""

    cursor: int = 0  # last instance id verified in the current pass
    pass_started_at: float = 0.0
    last_full_pass_at: float = 0.0  # when the last complete pass ended (0: never)
    passes: int = 0
    verified_bytes: int = 0  # totals since the index was created
    verified_instances: int = 0
    damaged: int = 0
    pass_instances: int = 0  # verified in the current pass

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Progress:
        try:
            raw = json.loads(text) if text else {}
        except ValueError:
            raw = {}
        out = cls()
        for f in fields(cls):
            value = raw.get(f.name) if isinstance(raw, dict) else None
            if isinstance(value, int | float) and not isinstance(value, bool):
                setattr(out, f.name, type(getattr(out, f.name))(value))
        return out


def load_progress(conn: sqlite3.Connection) -> Progress:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (SETTING,)).fetchone()
    return Progress.from_json(row[0] if row else "")
