"""The sync agent's side of deletion: tombstones in the catalog journal, the purge after the
grace (a clock injected, no sleeps), holds, undelete from the bucket, a restore after deletes,
deletions requested through control/<site>/deletions/, and retention's auto purge."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge import query
from shared import deletion
from shared.catalog import decode_batch
from shared.config import RetentionConfig, RetentionRule
from shared.deletion import Actor, Target
from shared.deletion_request import DeletionRequest, DeletionStatus
from shared.errors import Conflict, PermanentStoreError
from shared.index import Database
from shared.keys import (
    catalog_prefix,
    deletion_key,
    deletion_status_key,
    instance_key,
    parse_instance_object,
    revision_key,
)
from shared.recall import Recaller
from sync.agent import Agent
from sync.deletions import poll_deletions
from sync.holds import sync_holds
from sync.purge import Purger, auto_purge
from sync.restore import restore_index
from tests.support.gcs import BUCKET, running_emulator
from tests.support.sync import Site, site

DAY = 86400.0
ADMIN = Actor("cli:test", admin=True)


@pytest.fixture
def s(tmp_path: Path) -> Iterator[Site]:
    with site(tmp_path, f"file://{tmp_path / 'bucket'}") as st:
        yield st


@pytest.fixture
def agent(s: Site) -> Iterator[Agent]:
    a = s.agent()
    yield a
    a.close()


def synced_study(s: Site, agent: Agent, **spec: Any) -> str:
    uid = s.add_study(study_date=spec.pop("study_date", "20000101"), **spec)
    agent.drain()
    assert s.states(uid) == {"synced": 3}
    return uid


def keys_of(s: Site, study: str) -> list[str]:
    return [r["object_key"] for r in s.rows("study_id = ?", (s.study_id(study),))]


def journal(s: Site, agent: Agent) -> list[Any]:
    """Every catalog row of the site, in journal order."""
    rows = []
    for info in agent.store.list(catalog_prefix(s.cfg.sync.site)):
        with agent.store.open(info.key) as fh:
            rows += decode_batch(fh.read())
    return rows


def delete(s: Site, uid: str, cfg: RetentionConfig | None = None, **kw: Any) -> None:
    deletion.delete(s.db, s.cache.root, cfg or s.cfg.retention, Target(uid), ADMIN, **kw)


def visible(db: Database) -> dict[str, list[str]]:
    """C-FIND's answers at each level (edge.query on the index), for before/after checks."""
    out = {}
    for level, key in (("STUDY", "StudyInstanceUID"), ("SERIES", "SeriesInstanceUID")):
        q = query.build({"QueryRetrieveLevel": level, key: ""}, query.STUDY_ROOT)
        out[level] = sorted(query.row_values(q, r)[key] for r in db.reader().execute(q.sql))
    q = query.build({"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": ""}, query.STUDY_ROOT)
    out["IMAGE"] = sorted(
        query.row_values(q, r)["SOPInstanceUID"] for r in db.reader().execute(q.sql)
    )
    return out


def test_objects_go_only_after_the_grace_with_a_purge_tombstone(s: Site, agent: Agent) -> None:
    kept = synced_study(s, agent)
    gone = synced_study(s, agent)
    t0 = time.time()
    delete(s, gone, clock=lambda: t0)
    agent.catalog.flush()
    tomb = [r for r in journal(s, agent) if r.header.study_uid == gone][-3:]
    assert all(r.deleted and not r.purged and r.deleted_at == t0 for r in tomb)
    audits: list[dict[str, Any]] = []

    class Trail:
        def record(self, **kw: Any) -> None:
            audits.append(kw)

        def close(self) -> None:
            pass

    def purger(at: float) -> Purger:
        return Purger(s.cfg, s.db, agent.store, s.cache.root, agent.catalog,
                      clock=lambda: at, audit=Trail)  # type: ignore[arg-type]  # fmt: skip

    # a day short of the default 7: nothing goes
    assert purger(t0 + 6 * DAY).run().purged == 0
    assert all(agent.store.head(k) is not None for k in keys_of(s, gone))
    rep = purger(t0 + 7 * DAY + 1).run()
    assert (rep.purged, rep.objects_deleted) == (3, 3)
    assert all(agent.store.head(k) is None for k in keys_of(s, gone))
    assert all(agent.store.head(k) is not None for k in keys_of(s, kept))
    assert s.states(gone) == {"purged": 3}
    last = [r for r in journal(s, agent) if r.header.study_uid == gone][-3:]
    assert all(r.deleted and r.purged for r in last)
    assert [(a["action"], a["study_uid"]) for a in audits] == [("purge", gone)]
    with pytest.raises(Conflict, match="purged"):
        deletion.undelete(s.db, Target(gone), ADMIN)


def test_undelete_within_the_grace_recalls_the_same_bytes(s: Site, agent: Agent) -> None:
    uid = synced_study(s, agent)
    before = {
        r["sop_instance_uid"]: (s.cache.root / r["path"]).read_bytes()
        for r in s.rows("study_id = ?", (s.study_id(uid),))
    }
    delete(s, uid)
    agent.catalog.flush()
    assert Purger(s.cfg, s.db, agent.store, s.cache.root, agent.catalog).run().purged == 0
    deletion.undelete(s.db, Target(uid), ADMIN)
    assert s.states(uid) == {"evicted": 3}
    agent.catalog.flush()  # the journal's last rows say it is back
    assert not any(r.deleted for r in journal(s, agent)[-3:])
    rows = s.rows("study_id = ?", (s.study_id(uid),))
    recaller = Recaller(s.db, s.cache.root, agent.store)
    try:
        paths = recaller.recall_many([r["id"] for r in rows])
    finally:
        recaller.close()
    assert {
        r["sop_instance_uid"]: p.read_bytes() for r, p in zip(rows, paths, strict=True)
    } == before


def test_a_legal_hold_stops_the_purge_and_holds_the_objects(s: Site, agent: Agent) -> None:
    uid = synced_study(s, agent, patient_id="PH1")
    t0 = time.time()
    delete(s, uid, clock=lambda: t0)
    hold = deletion.place_hold(s.db, "patient", "PH1", "litigation", "cli:test", t0)
    assert sync_holds(s.db, agent.store) == 3
    (key, *_) = keys_of(s, uid)
    with pytest.raises(PermanentStoreError, match="hold"):  # the bucket refuses too (file://)
        agent.store.delete(key)
    late = Purger(
        s.cfg, s.db, agent.store, s.cache.root, agent.catalog, clock=lambda: t0 + 30 * DAY
    )
    assert late.run().purged == 0 and s.states(uid) == {"deleted": 3}
    deletion.release_holds(s.db, "patient", "PH1", "cli:test", "settled", t0)
    sync_holds(s.db, agent.store)
    held = s.db.reader().execute("SELECT bucket FROM holds WHERE id = ?", (hold.id,)).fetchone()
    assert held[0] == "released"
    assert late.run().purged == 3 and agent.store.head(key) is None


def test_restore_after_deletes_answers_as_before(s: Site, agent: Agent, tmp_path: Path) -> None:
    live = synced_study(s, agent)
    in_grace = synced_study(s, agent)
    purged = synced_study(s, agent)
    partial = synced_study(s, agent)
    series = (
        s.db.reader()
        .execute(
            "SELECT sop_instance_uid FROM instances WHERE study_id = ? LIMIT 1",
            (s.study_id(partial),),
        )
        .fetchone()[0]
    )
    t0 = time.time()
    delete(s, in_grace, clock=lambda: t0)
    delete(s, purged, clock=lambda: t0 - 8 * DAY)
    deletion.delete(
        s.db, s.cache.root, s.cfg.retention, Target(partial, sop_instance_uid=series), ADMIN
    )
    Purger(s.cfg, s.db, agent.store, s.cache.root, agent.catalog).run()
    agent.catalog.flush()
    assert s.states(purged) == {"purged": 3} and s.states(in_grace) == {"deleted": 3}
    before = visible(s.db)
    assert live in before["STUDY"] and in_grace not in before["STUDY"]

    # the edge is lost; its index is rebuilt from the journal alone
    fresh = Database(tmp_path / "restored" / "index.sqlite")
    try:
        rep = restore_index(fresh, agent.store, s.cfg.sync.site)
        assert rep.deleted == 4  # in_grace's three and partial's one
        assert visible(fresh) == before
        # the deletion goes on where it was: undeletable within the grace, purged after it
        states = dict(fresh.reader().execute(
            "SELECT s.study_uid, group_concat(DISTINCT i.state) FROM instances i "
            "JOIN studies s ON s.id = i.study_id GROUP BY s.id"
        ).fetchall())  # fmt: skip
        assert purged not in states and states[in_grace] == "deleted"
        deletion.undelete(fresh, Target(in_grace), ADMIN)
        assert in_grace in visible(fresh)["STUDY"]
    finally:
        fresh.close()


def _request(s: Site, agent: Agent, **kw: Any) -> DeletionStatus:
    req = DeletionRequest(id=f"r{time.monotonic_ns()}", site=s.cfg.sync.site, **kw)
    agent.store.put(deletion_key(req.site, req.id), req.to_bytes())
    assert poll_deletions(s.cfg, s.db, agent.store) == 1
    assert poll_deletions(s.cfg, s.db, agent.store) == 0  # applied once
    with agent.store.open(deletion_status_key(req.site, req.id)) as fh:
        return DeletionStatus.from_bytes(fh.read())


def test_deletions_requested_through_the_cloud_obey_this_sites_rules(tmp_path: Path) -> None:
    with site(tmp_path, f"file://{tmp_path / 'bucket'}") as s:
        rules = [RetentionRule(name="recent", years=5)]
        s.cfg = dataclasses.replace(s.cfg, retention=RetentionConfig(rules=rules))
        agent = s.agent()
        try:
            old = synced_study(s, agent)
            new = synced_study(s, agent, study_date=time.strftime("%Y%m%d"))
            st = _request(s, agent, study_uid=old, reason="duplicate", requested_by="root")
            assert (st.phase, st.instances) == ("done", 3) and s.states(old) == {"deleted": 3}
            st = _request(s, agent, study_uid=new, reason="x")
            assert st.phase == "refused" and "under retention" in st.detail
            st = _request(s, agent, study_uid=new, reason="wrong patient", override=True)
            assert st.phase == "done" and "override" in st.detail
            deletion.place_hold(s.db, "study", old, "court order", "cli:test", time.time())
            deletion.undelete(s.db, Target(old), ADMIN)
            st = _request(s, agent, study_uid=old, reason="again", override=True)
            assert st.phase == "refused" and "legal hold" in st.detail
            got = [(r["actor"], r["outcome"]) for r in audit_records(s) if r["action"] == "delete"]
            assert got == [
                ("cloud:root", "ok"),
                ("cloud:admin", "denied"),
                ("cloud:admin", "ok"),
                ("cloud:admin", "denied"),
            ]
        finally:
            agent.close()


def audit_records(s: Site) -> list[dict[str, Any]]:
    files = sorted((Path(s.cfg.edge.data_dir) / "audit").glob("*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_auto_purge_deletes_expired_studies_through_the_same_path(s: Site) -> None:
    rules = [RetentionRule(name="ct", modalities=["CT"], years=1)]
    r = RetentionConfig(rules=rules, auto_purge=True, auto_purge_dry_run=True)
    dry = dataclasses.replace(s.cfg, retention=r)
    real = dataclasses.replace(s.cfg, retention=dataclasses.replace(r, auto_purge_dry_run=False))
    old = s.add_study(study_date="20000101")
    held = s.add_study(study_date="20000101", patient_id="PKEEP")
    recent = s.add_study(study_date=time.strftime("%Y%m%d"))
    norule = s.add_study(study_date="20000101", modality="MR")  # no rule: never expires
    deletion.place_hold(s.db, "patient", "PKEEP", "keep", "cli:test", time.time())
    assert auto_purge(dry, s.db, s.cache.root) == [old]
    assert s.states(old) == {"cached": 3}  # a dry run changes nothing
    assert auto_purge(real, s.db, s.cache.root) == [old]
    assert s.states(old) == {"deleted": 3}
    assert s.states(held) == s.states(recent) == s.states(norule) == {"cached": 3}
    recs = audit_records(s)
    assert [(x["action"], x["outcome"]) for x in recs] == [
        ("auto-purge", "dry-run"),
        ("delete", "ok"),
    ]
    assert recs[1]["actor"] == "retention" and "rule 'ct'" in recs[1]["reason"]


def test_a_purge_after_the_catalog_is_gone_still_journals_first(s: Site, agent: Agent) -> None:
    """A purging row is never finished before its tombstone is in the journal."""
    uid = synced_study(s, agent)
    delete(s, uid, clock=lambda: time.time() - 8 * DAY)
    purger = Purger(s.cfg, s.db, agent.store, s.cache.root, agent.catalog)
    # the journal cannot be written (its prefix is a file now): the purge stops before deleting
    catalog_dir = s.tmp_path / "bucket" / "catalog" / s.cfg.sync.site
    moved = catalog_dir.with_name("moved")
    catalog_dir.rename(moved)
    catalog_dir.write_bytes(b"")
    with pytest.raises(PermanentStoreError, match="collides"):
        purger.run()
    assert s.states(uid) == {"purging": 3}
    assert all(agent.store.head(k) is not None for k in keys_of(s, uid))
    catalog_dir.unlink()
    moved.rename(catalog_dir)
    assert purger.run().purged == 3


def test_purge_and_holds_on_the_gcs_emulator(tmp_path: Path) -> None:
    """The same purge against fake-gcs-server; a hold there is accepted but not kept, which the
    agent records as `unsupported` (hpacs's own hold still stops the purge)."""
    with running_emulator() as emu, site(tmp_path, f"gs://{BUCKET}", emulator_host=emu.url) as s:
        agent = s.agent()
        try:
            held, gone = synced_study(s, agent), synced_study(s, agent)
            t0 = time.time()
            for uid in (held, gone):
                delete(s, uid, clock=lambda: t0)
            deletion.place_hold(s.db, "study", held, "audit", "cli:test", t0)
            assert sync_holds(s.db, agent.store) == 3
            state = s.db.reader().execute("SELECT bucket FROM holds").fetchone()[0]
            assert state == "unsupported"
            purger = Purger(s.cfg, s.db, agent.store, s.cache.root, agent.catalog,
                            clock=lambda: t0 + 8 * DAY)  # fmt: skip
            assert purger.run().purged == 3
            assert all(agent.store.head(k) is None for k in keys_of(s, gone))
            assert all(agent.store.head(k) is not None for k in keys_of(s, held))
            assert s.states(held) == {"deleted": 3}
        finally:
            agent.close()


def test_the_purge_deletes_every_version_of_a_corrected_instance(s: Site, agent: Agent) -> None:
    """A corrected instance keeps its original at `instance_key` and each corrected version
    beside it (`revision_key`): the purge takes them all, and nothing of a neighbour whose SOP
    Instance UID merely starts with the same digits."""
    uid = synced_study(s, agent)
    row = s.rows("study_id = ?", (s.study_id(uid),))[0]
    study, series, sop, _ = parse_instance_object(row["object_key"])  # type: ignore[misc]
    revision = revision_key(study, series, sop, "0badcafe")
    agent.store.put(revision, b"corrected bytes", content_type="application/dicom")
    t0 = time.time()
    delete(s, uid, clock=lambda: t0)
    agent.catalog.flush()
    purger = Purger(
        s.cfg, s.db, agent.store, s.cache.root, agent.catalog, clock=lambda: t0 + 8 * DAY
    )
    purger.run()
    assert agent.store.head(row["object_key"]) is None
    assert agent.store.head(revision) is None
    # the versions of "1.2.3" are not those of "1.2.3.4" (a shorter UID than synthetic ones)
    short = [instance_key("1.2", "1.2.1", u) for u in ("1.2.3", "1.2.3.4")]
    for key in [*short, revision_key("1.2", "1.2.1", "1.2.3", "0badcafe")]:
        agent.store.put(key, b"x", content_type="application/dicom")
    assert purger._versions(short[0]) == sorted(
        [short[0], revision_key("1.2", "1.2.1", "1.2.3", "0badcafe")]
    )
