"""DICOMweb on the edge: the shared routes (shared/dicomweb/routes.py) over the edge's index,
cache and one ingest path.

- **QIDO-RS** goes through the C-FIND builder (`edge/query.build`), so it matches by the same
  rules and sees what C-FIND sees (evicted instances included, invariant 3; whatever that
  builder hides, QIDO hides). QIDO's study/series/instance levels are C-FIND's STUDY/SERIES/
  IMAGE. Two passes: the page of unique keys (filters, order, `limit`/`offset` around the
  built SELECT), then the rows of that page only, so the computed keys (ModalitiesInStudy, the
  counters) are computed for the page, not for every match. Names, descriptions and the
  referring physician match case-insensitively as on the cloud: PatientName on its upper-cased
  column (in the builder), the others (no such column in the edge index) with SQLite's
  `upper()` around the page query, which folds ASCII letters only.
- **WADO-RS** lists instances through the same builder (IMAGE level) and reads their bytes only
  through `edge.locate.Locator`: verified against the crc32c of ingest, a damaged file
  quarantined and repaired from its cloud copy, an evicted instance recalled (read-through).
  Objects up to 8 MiB are read whole and verified before anything is sent; larger ones stream
  through a verifying reader. A retrieve marks its study accessed (the evictor's LRU), at most
  once a minute per study.
- **STOW-RS** stores each part through the one `Ingestor` (`ingest_stream`): the acceptance
  rule, the duplicate policy, the durable write order and the routing jobs queued in the
  ingest transaction, exactly as for C-STORE, the hot folder and `import`.
"""

from __future__ import annotations

import io
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from edge import query
from edge.accesslog import AccessLog
from edge.ingest import Ingestor, Outcome
from edge.locate import INSTANCE_COLUMNS, Locator
from edge.locate import InstanceRef as LocalRef
from edge.webauth import Principal
from shared import attributes, matching
from shared.config import Config
from shared.dicom import read_header
from shared.dicomweb import routes
from shared.dicomweb.qido import INSTANCE, SERIES, STUDY, QidoQuery
from shared.dicomweb.source import InstanceRef, StoredPart
from shared.errors import PacsError, dimse_status
from shared.index import NORMALISED, Database
from shared.rows import Origin
from shared.sqldialect import SQLITE

log = logging.getLogger("hpacs.edge.dicomweb")

LEVEL = {STUDY: "STUDY", SERIES: "SERIES", INSTANCE: "IMAGE"}
MODEL = query.STUDY_ROOT
READ_WHOLE_BYTES = 8 * 1024 * 1024  # up to this, read whole and verified before sending
TOUCH_INTERVAL_S = 60.0  # a study's last_access is written at most this often by WADO
_LOST = "lost"


def _returned(level: str) -> tuple[str, ...]:
    """What a QIDO answer holds at a level: the stored attributes of the level and those above
    (as the cloud catalog answers), the study's and series' computed keys, and at the
    instance level the edge's InstanceAvailability (NEARLINE: evicted, recalled on access)."""
    tables = {STUDY: ("studies",), SERIES: ("studies", "series")}.get(
        level, ("studies", "series", "instances")
    )
    out = [a.keyword for t in tables for a in attributes.stored_at(t)]
    if level == STUDY:
        out += ["NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy"]
    elif level == SERIES:
        out.append("NumberOfSeriesRelatedInstances")
    else:
        out.append("InstanceAvailability")
    return tuple(k for k in out if k in query.ATTRS)


RETURNED = {level: _returned(level) for level in LEVEL}
# (keyword, descending): the cloud catalog's order, so both sides page alike
ORDER: dict[str, tuple[tuple[str, bool], ...]] = {
    STUDY: (("StudyDate", True), ("StudyTime", True), ("StudyInstanceUID", True)),
    SERIES: (("StudyInstanceUID", False), ("SeriesNumber", False), ("SeriesInstanceUID", False)),
    INSTANCE: (
        ("StudyInstanceUID", False),
        ("SeriesInstanceUID", False),
        ("InstanceNumber", False),
        ("SOPInstanceUID", False),
    ),
}
UNIQUE = {STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID", INSTANCE: "SOPInstanceUID"}
# case-insensitive attributes the edge index has no upper-cased column for
CI_OUTSIDE = frozenset(
    a.keyword for a in attributes.REGISTRY if a.ci and a.keyword not in NORMALISED
)


def _ascii_upper(value: str) -> str:
    """Upper case as SQLite's upper() does it: ASCII letters only."""
    return "".join(c.upper() if c.isascii() else c for c in value)


def _with(built: query.Query) -> tuple[str, dict[str, str]]:
    """`WITH q(c0, c1, ...) AS (<built>)` and each keyword's column name in q."""
    cols = {kw: f"c{i}" for i, kw in enumerate(built.keywords)}
    return f"WITH q({', '.join(cols.values())}) AS ({built.sql})", cols


def search(conn: sqlite3.Connection, q: QidoQuery) -> list[dict[str, Any]]:
    """A QIDO search on the edge index through the C-FIND builder (module docstring)."""
    level, unique = LEVEL[q.level], UNIQUE[q.level]
    for kw, values in q.filters.items():
        if attributes.BY_KEYWORD[kw].kind == attributes.UID:
            matching.uids(values, validate=True)
    outside = {kw: v for kw, v in q.filters.items() if kw in CI_OUTSIDE}
    ident: dict[str, Any] = {"QueryRetrieveLevel": level}
    ident.update({kw: "" for kw, _ in ORDER[q.level]})
    ident.update({kw: "" for kw in outside})
    ident.update({kw: "\\".join(v) for kw, v in q.filters.items() if kw not in outside})
    built = query.build(ident, MODEL)
    head, cols = _with(built)
    params: list[Any] = list(built.params)
    terms = [
        matching.any_of([matching.string(f"upper({cols[kw]})", _ascii_upper(v)) for v in values])
        for kw, values in outside.items()
    ]
    where = SQLITE.render(matching.all_of(terms), params)
    order = ", ".join(f"{cols[kw]}{' DESC' if desc else ''}" for kw, desc in ORDER[q.level])
    sql = f"{head} SELECT {cols[unique]} FROM q"
    sql += f" WHERE {where}" if where else ""
    sql += f" ORDER BY {order} LIMIT ? OFFSET ?"
    page = [r[0] for r in conn.execute(sql, [*params, q.limit, q.offset])]
    if not page:
        return []
    rows_ident: dict[str, Any] = {"QueryRetrieveLevel": level}
    rows_ident.update({kw: "" for kw in RETURNED[q.level]})
    rows_ident[unique] = "\\".join(page)
    full = query.build(rows_ident, MODEL)
    rows = [query.row_values(full, r) for r in conn.execute(full.sql, full.params)]
    by_key = {r[unique]: r for r in rows}
    return [by_key[k] for k in page if k in by_key]


def instances(
    conn: sqlite3.Connection, study: str, series: str | None, instance: str | None
) -> list[tuple[str, str, LocalRef]]:
    """(study UID, series UID, row) of the instances a WADO URL names, through the C-FIND
    builder at the IMAGE level, in series/instance order."""
    ident = {
        "QueryRetrieveLevel": "IMAGE",
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series or "",
        "SOPInstanceUID": instance or "",
        "SeriesNumber": "",
        "InstanceNumber": "",
    }
    built = query.build(ident, MODEL)
    head, c = _with(built)
    sql = (
        f"{head} SELECT {c['StudyInstanceUID']} AS study_uid, "
        f"{c['SeriesInstanceUID']} AS series_uid, {INSTANCE_COLUMNS} "
        f"FROM q JOIN instances i ON i.sop_instance_uid = {c['SOPInstanceUID']} "
        f"ORDER BY {c['SeriesNumber']}, {c['SeriesInstanceUID']}, {c['InstanceNumber']}, "
        f"{c['SOPInstanceUID']}"
    )
    return [
        (r["study_uid"], r["series_uid"], LocalRef.from_row(r))
        for r in conn.execute(sql, built.params)
    ]


@dataclass
class EdgeStowOutcome:
    """One STOW part on the edge (`StoredPart`)."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    failure: int = 0
    outcome: str = ""  # stored, duplicate, replaced ("" when it failed)


class EdgeDicomweb:
    """The edge's side of the shared DICOMweb routes, one per HTTP app."""

    def __init__(self, db: Database, locator: Locator, ingestor: Ingestor) -> None:
        self.db = db
        self.locator = locator
        self.ingestor = ingestor
        self._touched: dict[int, float] = {}
        self._lock = threading.Lock()

    def source(self, client: str) -> EdgeSource:
        return EdgeSource(self, client)

    def touch(self, study_ids: set[int]) -> None:
        """Mark studies accessed (the sync agent evicts least recently used studies first),
        each at most once per TOUCH_INTERVAL_S: a viewer's hundreds of frame requests cost
        no more than one write."""
        now = time.time()
        with self._lock:
            due = sorted(
                s for s in study_ids if now - self._touched.get(s, 0.0) >= TOUCH_INTERVAL_S
            )
            for s in due:
                self._touched[s] = now
            if len(self._touched) > 10_000:
                self._touched = {
                    s: t for s, t in self._touched.items() if now - t < TOUCH_INTERVAL_S
                }
        if due:
            marks = ",".join("?" * len(due))
            with self.db.write() as conn:
                conn.execute(
                    f"UPDATE studies SET last_access = ? WHERE id IN ({marks})", [now, *due]
                )


class EdgeSource:
    """`DicomwebSource` over the edge index, cache and Ingestor for one request (every signed-in
    user of the edge may read every study of the site: no scope to apply)."""

    def __init__(self, side: EdgeDicomweb, client: str) -> None:
        self.side = side
        self.client = client

    def search(self, q: QidoQuery) -> list[dict[str, Any]]:
        return search(self.side.db.reader(), q)

    def instances(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[InstanceRef]:
        rows = instances(self.side.db.reader(), study_uid, series_uid, sop_instance_uid)
        if sop_instance_uid is None:  # a lost instance fails alone when named, else is left out
            rows = [r for r in rows if r[2].state != _LOST]
        if rows:
            self.side.touch({r.study_id for _, _, r in rows})
        return [
            InstanceRef(
                study_uid=st,
                series_uid=se,
                sop_instance_uid=r.sop_instance_uid,
                transfer_syntax=r.transfer_syntax,
                size=r.size,
                locator=r.path,
                sop_class_uid=r.sop_class_uid,
                crc32c=r.crc32c,
                handle=r,
            )
            for st, se, r in rows
        ]

    def open(self, ref: InstanceRef, start: int = 0, length: int | None = None) -> BinaryIO:
        """Verified bytes through the Locator. Whole reads of objects up to READ_WHOLE_BYTES and
        every range are verified before anything is returned (a damaged file is repaired from
        its cloud copy on the way); larger whole objects stream through a verifying reader."""
        local: LocalRef = ref.handle
        if start == 0 and length is None and ref.size > READ_WHOLE_BYTES:
            return self.side.locator.open(local, reader="wado")  # type: ignore[return-value]
        data = self.side.locator.read(local, reader="wado")
        end = None if length is None else start + length
        return io.BytesIO(data[start:end])

    def store(self, path: Path, study_uid: str | None) -> EdgeStowOutcome:
        out = EdgeStowOutcome()
        try:
            with open(path, "rb") as fh:
                res = self.side.ingestor.ingest_stream(
                    fh, Origin("stow", "", self.client), expected_study=study_uid
                )
        except PacsError as exc:
            out.failure = dimse_status(exc)
            _describe_failed(out, path)
            log.warning(
                "STOW part refused sop_instance_uid=%s client=%s error=%s",
                out.sop_instance_uid or "-",
                self.client,
                exc,
            )
            return out
        h = res.header
        out.sop_class_uid, out.sop_instance_uid = h.sop_class_uid, h.sop_instance_uid
        out.study_uid, out.series_uid, out.outcome = h.study_uid, h.series_uid, res.outcome.value
        return out

    def stored(self, parts: Sequence[StoredPart]) -> str:
        """Nothing to publish: each part was indexed (and its routing queued) as it came."""
        outcomes = [getattr(p, "outcome", "") for p in parts]
        new = outcomes.count(Outcome.STORED.value) + outcomes.count(Outcome.REPLACED.value)
        dup = outcomes.count(Outcome.DUPLICATE.value)
        return f"STOW stored={new} duplicates={dup} failed={outcomes.count('')}"


def _describe_failed(out: EdgeStowOutcome, path: Path) -> None:
    """The UIDs of a refused part for its FailedSOPSequence entry, when its header reads."""
    try:
        h = read_header(path)
    except PacsError:
        return
    out.sop_class_uid, out.sop_instance_uid = h.sop_class_uid, h.sop_instance_uid
    out.study_uid, out.series_uid = h.study_uid, h.series_uid


# ---- the edge's hooks into the shared routes ---------------------------------------------------

NOTE = web.RequestKey("dicomweb_note", dict)  # what the request's audit record says
ACTIONS = {(m, routes.ROOT + p): action for m, p, _, _, action in routes.ROUTES}


def _note(request: web.Request, detail: str, study_uids: str) -> None:
    note = request.get(NOTE)
    if note is not None:
        note["detail"] = detail
        if study_uids:
            note["study_uid"] = study_uids


def spool_dir(cfg: Config) -> Path:
    """Where STOW parts are spooled before ingest; what a crash left there is removed now (the
    client had no answer for those parts: it sends them again)."""
    path = Path(cfg.edge.data_dir) / "tmp" / "stow"
    if path.is_dir():
        for entry in path.iterdir():
            shutil.rmtree(entry, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def side(dw: EdgeDicomweb, cfg: Config, spool: Path) -> routes.Side:
    """The edge's side of the shared routes: its source, URLs from the request itself, the
    audit note, C-FIND's result cap for QIDO, each STOW part bounded like any object."""
    return routes.Side(
        source=lambda request: dw.source(request.remote or ""),
        base_url=routes.public_root,
        note=_note,
        max_results=cfg.edge.find_max_results,
        spool_dir=spool,
        max_part_bytes=cfg.edge.max_object_bytes,
        limit_name="edge.max_object_bytes",
    )


def audit(access: AccessLog, request: web.Request, p: Principal, status: int) -> None:
    """The audit of one answered DICOMweb request (edge/accesslog.py): reads aggregated per
    user, client and study; every STOW request on its own."""
    note = request.get(NOTE, {})
    route = request.match_info.route
    path = route.resource.canonical if route.resource else ""
    action = ACTIONS.get((request.method, path), "dicomweb")
    study = note.get("study_uid") or request.match_info.get("study", "")
    detail = note.get("detail") or f"{request.method} {action}"
    client = request.remote or ""
    if action == "stow":
        outcome = "ok" if status < 400 else "denied" if status in (401, 403) else "error"
        access.write(
            action=action, actor=p.name, role=p.role, client=client, study_uid=study,
            outcome=outcome, detail=f"{detail} status={status}",
        )  # fmt: skip
        return
    access.read(
        actor=p.name, role=p.role, client=client, study_uid=study, action=action,
        detail=detail, status=status, now=time.time(),
    )  # fmt: skip
