"""Deleting, undeleting and holding studies from the edge (CLI and console): the shared
deletion path (shared/deletion.py) plus one audit event per attempt, allowed or not.

Audit actions: `delete` (`delete-override` when an admin lifted retention: the record keeps
what was overridden and why), `undelete`, `hold`, `release`; outcome `ok`, `denied` (a rule or
a hold said no) or `error`. The CLI and the console call these, the sync agent records the
deletions it applies for the cloud API and its purges itself (sync/deletions.py,
sync/purge.py): every change of a study's lifecycle is on the site's one trail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edge.audit import EdgeAudit
from shared import deletion
from shared.config import Config
from shared.deletion import Actor, Hold, Outcome, Target
from shared.errors import Forbidden, PacsError
from shared.index import Database

T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    """Who acts, as the audit trail names them."""

    name: str  # cli:<os user>, or the console user
    role: str = "admin"  # admin, technician (the CLI runs as admin)
    client: str = ""

    @property
    def actor(self) -> Actor:
        return Actor(self.name, admin=self.role == "admin")


class Studies:
    def __init__(self, cfg: Config, db: Database, audit: EdgeAudit) -> None:
        self.cfg = cfg
        self.db = db
        self.audit = audit

    def _audited(
        self,
        who: Caller,
        action: str,
        target: str,
        study_uid: str,
        reason: str,
        work: Callable[[], T],
        detail: Callable[[T], str] = lambda _r: "",
    ) -> T:
        try:
            result = work()
        except PacsError as exc:
            outcome = "denied" if isinstance(exc, Forbidden) else "error"
            self._record(who, action, target, study_uid, reason, outcome, str(exc))
            raise
        self._record(who, action, target, study_uid, reason, "ok", detail(result))
        return result

    def _record(
        self,
        who: Caller,
        action: str,
        target: str,
        study_uid: str,
        reason: str,
        outcome: str,
        detail: str,
    ) -> None:
        self.audit.record(
            action=action,
            actor=who.name,
            role=who.role,
            client=who.client,
            target=target,
            study_uid=study_uid,
            outcome=outcome,
            reason=reason,
            detail=detail,
        )

    def delete(self, who: Caller, target: Target, reason: str, override: bool) -> Outcome:
        def work() -> Outcome:
            return deletion.delete(
                self.db,
                Path(self.cfg.edge.cache_dir),
                self.cfg.retention,
                target,
                who.actor,
                reason=reason,
                override=override,
            )

        action = "delete-override" if override else "delete"
        out = self._audited(
            who,
            action,
            target.describe(),
            target.study_uid,
            reason,
            work,
            lambda o: f"instances={o.instances} {o.override}".strip(),
        )
        return out

    def undelete(self, who: Caller, target: Target, reason: str = "") -> Outcome:
        return self._audited(
            who,
            "undelete",
            target.describe(),
            target.study_uid,
            reason,
            lambda: deletion.undelete(self.db, target, who.actor),
            lambda o: f"instances={o.instances} purged={o.already}",
        )

    def hold(self, who: Caller, kind: str, value: str, reason: str) -> Hold:
        study = value if kind == "study" else ""
        return self._audited(
            who,
            "hold",
            f"{kind} {study}".strip(),
            study,
            reason,
            lambda: deletion.place_hold(self.db, kind, value, reason, who.name, time.time()),
            lambda h: f"hold_id={h.id}",
        )

    def release(self, who: Caller, kind: str, value: str, reason: str) -> list[Hold]:
        study = value if kind == "study" else ""
        return self._audited(
            who,
            "release",
            f"{kind} {study}".strip(),
            study,
            reason,
            lambda: deletion.release_holds(self.db, kind, value, who.name, reason, time.time()),
            lambda hs: "hold_ids=" + ",".join(str(h.id) for h in hs),
        )
