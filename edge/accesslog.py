"""Reads of patient data over the edge's DICOMweb as audit records, aggregated (decision).

A viewer opening one study makes hundreds of requests (a metadata request per series, one
frames request per image, thumbnails). One record each would add hundreds of records per
study opened to a log that is HMAC-chained, shipped to the bucket and read by people. So:

- the **first** request of a (user, client address, study) within a window is recorded at once
  (who opened which study, when, from where: the fact an audit needs, never delayed);
- further requests of that key within the window are counted, and when the window ends one
  record says how many more there were and of which kinds (`wado-frames=480 ...`);
- a request that failed (4xx/5xx) or was refused is recorded at once, on its own;
- searches without a study (the study list) are keyed with an empty study; their query values
  (possibly a patient's name) are never recorded, only the level and the number of results;
- STOW requests are not aggregated: each is one record (its own action, `stow`).

Windows are `WINDOW_S` long from their first request; `flush` (the HTTP side's housekeeping,
every second, and at stop) writes the summaries of ended windows. A crash loses at most the
counts of open windows, never a first access.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

WINDOW_S = 60.0
MAX_OPEN = 10_000  # open windows kept; beyond it the oldest are summarised early

Record = Callable[..., Any]  # EdgeAudit.record


@dataclass
class _Window:
    started: float
    role: str
    kinds: Counter[str] = field(default_factory=Counter)


class AccessLog:
    def __init__(self, record: Record, window_s: float = WINDOW_S) -> None:
        self._record = record
        self.window_s = window_s
        self._open: dict[tuple[str, str, str], _Window] = {}
        self._lock = threading.Lock()

    def read(
        self,
        *,
        actor: str,
        role: str,
        client: str,
        study_uid: str,
        action: str,
        detail: str,
        status: int,
        now: float,
    ) -> None:
        """One DICOMweb read (QIDO or WADO) answered with `status`."""
        if status >= 400:
            outcome = "denied" if status in (401, 403) else "error"
            detail = f"{detail} status={status}"
            self._write(action, actor, role, client, study_uid, outcome, detail)
            return
        key = (actor, client, study_uid)
        with self._lock:
            w = self._open.get(key)
            if w is not None and now - w.started < self.window_s:
                w.kinds[action] += 1
                return
            ended = self._open.pop(key, None)
            self._open[key] = _Window(now, role)
            overflow = self._evict() if len(self._open) > MAX_OPEN else []
        if ended is not None:
            self._summary(key, ended)
        for k, old in overflow:
            self._summary(k, old)
        self._write(action, actor, role, client, study_uid, "ok", detail)

    def write(
        self, *, action: str, actor: str, role: str, client: str, study_uid: str, outcome: str,
        detail: str,
    ) -> None:  # fmt: skip
        """A request recorded on its own (STOW)."""
        self._write(action, actor, role, client, study_uid, outcome, detail)

    def flush(self, now: float, *, everything: bool = False) -> int:
        """Write the summaries of windows that ended (all of them with `everything`)."""
        with self._lock:
            done = [
                (k, w)
                for k, w in self._open.items()
                if everything or now - w.started >= self.window_s
            ]
            for k, _ in done:
                del self._open[k]
        for k, w in done:
            self._summary(k, w)
        return len(done)

    def _evict(self) -> list[tuple[tuple[str, str, str], _Window]]:
        oldest = sorted(self._open.items(), key=lambda kv: kv[1].started)[: MAX_OPEN // 10]
        for k, _ in oldest:
            del self._open[k]
        return oldest

    def _summary(self, key: tuple[str, str, str], w: _Window) -> None:
        n = sum(w.kinds.values())
        if not n:
            return
        actor, client, study = key
        kinds = " ".join(f"{k}={v}" for k, v in sorted(w.kinds.items()))
        self._write(
            "dicomweb-read", actor, w.role, client, study, "ok", f"{n} more requests: {kinds}"
        )

    def _write(
        self, action: str, actor: str, role: str, client: str, study: str, outcome: str, detail: str
    ) -> None:
        self._record(
            action=action,
            actor=actor,
            role=role,
            client=client,
            study_uid=study,
            outcome=outcome,
            detail=detail,
        )
