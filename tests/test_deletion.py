"""The deletion path (shared/deletion.py) on a real index and cache: what a deletion hides, which
files it removes, what an undelete restores, what retention and legal holds forbid, and what a
modality sending a deleted instance again gets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge import query
from shared import deletion
from shared.config import RetentionConfig, RetentionRule
from shared.deletion import Actor, Target
from shared.errors import Conflict, Forbidden, InstanceBusy, InstanceDeleted, NotFound
from shared.lifecycle import State, transition
from shared.rows import Origin
from tests.support.sync import Site, site

ADMIN = Actor("cli:test", admin=True)
TECH = Actor("console:tech", admin=False)
NO_RULES = RetentionConfig()
TEN_YEARS = RetentionConfig(rules=[RetentionRule(name="adults", years=10)])


@pytest.fixture
def s(tmp_path: Path) -> Iterator[Site]:
    with site(tmp_path, f"file://{tmp_path / 'bucket'}") as st:
        yield st


def find(s: Site, level: str, **keys: Any) -> list[dict[str, Any]]:
    ident = {"QueryRetrieveLevel": level} | keys
    q = query.build(ident, query.PATIENT_ROOT if level == "PATIENT" else query.STUDY_ROOT)
    return [query.row_values(q, r) for r in s.db.reader().execute(q.sql, q.params)]


def instance_rows(s: Site, study: str) -> list[Any]:
    return s.rows("study_id = ?", (s.study_id(study),))


def delete(s: Site, target: Target, **kw: Any) -> deletion.Outcome:
    kw.setdefault("actor", ADMIN)
    cfg = kw.pop("cfg", NO_RULES)
    return deletion.delete(s.db, s.cache.root, cfg, target, kw.pop("actor"), **kw)


def test_delete_hides_at_every_level_and_undelete_restores(s: Site) -> None:
    study = s.add_study(instances=3, patient_id="PDEL", study_date="20000101")
    other = s.add_study(instances=2, patient_id="PDEL", study_date="20000101")
    assert len(find(s, "STUDY", PatientID="PDEL")) == 2
    files = [s.cache.root / r["path"] for r in instance_rows(s, study)]

    out = delete(s, Target(study), reason="wrong patient")
    assert (out.instances, out.files_removed) == (3, 0)
    uid = {"StudyInstanceUID": study}
    assert find(s, "STUDY", **uid) == [] and find(s, "SERIES", **uid) == []
    assert find(s, "IMAGE", **uid) == []
    # the patient stays (another study), with the counts of what is visible
    (patient,) = find(
        s, "PATIENT", PatientID="PDEL", NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedInstances="",
    )  # fmt: skip
    assert patient["NumberOfPatientRelatedStudies"] == 1
    assert patient["NumberOfPatientRelatedInstances"] == 2
    # never uploaded: the cache file is the only copy, kept (hidden) until the purge
    assert all(f.is_file() for f in files)
    assert {r["state"] for r in instance_rows(s, study)} == {"deleted"}
    with pytest.raises(NotFound, match="already deleted"):
        delete(s, Target(study))

    back = deletion.undelete(s.db, Target(study), TECH)
    assert back.instances == 3
    assert {r["state"] for r in instance_rows(s, study)} == {"cached"}
    (row,) = find(s, "STUDY", NumberOfStudyRelatedInstances="", **uid)
    assert row["NumberOfStudyRelatedInstances"] == 3
    assert len(find(s, "IMAGE", **uid)) == 3
    assert other in {r["StudyInstanceUID"] for r in find(s, "STUDY", PatientID="PDEL")}


def test_synced_files_go_at_once_and_come_back_evicted(s: Site) -> None:
    study = s.add_study(instances=2, study_date="20000101")
    agent = s.agent()
    try:
        agent.drain()
    finally:
        agent.close()
    assert s.states(study) == {"synced": 2}
    files = [s.cache.root / r["path"] for r in instance_rows(s, study)]
    out = delete(s, Target(study))
    assert out.files_removed == 2 and not any(f.exists() for f in files)
    deletion.undelete(s.db, Target(study), TECH)
    # the verified copy in the bucket is recalled on demand, like any evicted instance
    assert s.states(study) == {"evicted": 2}
    assert all(r["catalog_seq"] == 0 for r in instance_rows(s, study))  # journalled again


def test_series_and_instance_deletion_keep_the_rest(s: Site) -> None:
    study = s.add_study(instances=2, series_count=2, study_date="20000101")
    rows = instance_rows(s, study)
    series = sorted({r["series_id"] for r in rows})
    se_uids = [
        s.db.reader().execute("SELECT series_uid FROM series WHERE id = ?", (i,)).fetchone()[0]
        for i in series
    ]
    delete(s, Target(study, series_uid=se_uids[0]))
    (st,) = find(
        s, "STUDY", StudyInstanceUID=study, NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="", ModalitiesInStudy="",
    )  # fmt: skip
    assert (st["NumberOfStudyRelatedSeries"], st["NumberOfStudyRelatedInstances"]) == (1, 2)
    assert [r["SeriesInstanceUID"] for r in find(s, "SERIES", StudyInstanceUID=study)] == [
        se_uids[1]
    ]
    sop = find(s, "IMAGE", StudyInstanceUID=study, SOPInstanceUID="")[0]["SOPInstanceUID"]
    delete(s, Target(study, series_uid=se_uids[1], sop_instance_uid=sop))
    assert [r["SOPInstanceUID"] for r in find(s, "IMAGE", StudyInstanceUID=study)] != [sop]
    assert len(find(s, "IMAGE", StudyInstanceUID=study)) == 1
    # the study's last instance: the study disappears
    last = find(s, "IMAGE", StudyInstanceUID=study, SOPInstanceUID="")[0]["SOPInstanceUID"]
    delete(s, Target(study, sop_instance_uid=last))
    assert find(s, "STUDY", StudyInstanceUID=study) == []
    # undeleting the study brings back all three deletions at once
    assert deletion.undelete(s.db, Target(study), TECH).instances == 4
    assert len(find(s, "IMAGE", StudyInstanceUID=study)) == 4


def test_retention_blocks_and_only_an_admin_with_a_reason_overrides(s: Site) -> None:
    recent = s.add_study(study_date=time.strftime("%Y%m%d"))
    old = s.add_study(study_date="20000101")
    with pytest.raises(Forbidden, match=r"under retention until .*rule 'adults'"):
        delete(s, Target(recent), cfg=TEN_YEARS)
    with pytest.raises(Forbidden, match="only an admin"):
        delete(s, Target(recent), cfg=TEN_YEARS, actor=TECH, override=True, reason="x")
    with pytest.raises(Forbidden, match="needs a reason"):
        delete(s, Target(recent), cfg=TEN_YEARS, override=True)
    assert s.states(recent) == {"cached": 3}  # nothing changed by a refusal
    out = delete(s, Target(recent), cfg=TEN_YEARS, override=True, reason="sent by mistake")
    assert out.instances == 3 and "override of retention" in out.override
    # an expired study needs no override, and a technician may delete it
    assert delete(s, Target(old), cfg=TEN_YEARS, actor=TECH).override == ""


def test_legal_hold_blocks_every_deletion_and_override(s: Site) -> None:
    study = s.add_study(patient_id="PHOLD", study_date="20000101")
    other = s.add_study(patient_id="PHOLD", study_date="20000101")
    now = time.time()
    hold = deletion.place_hold(s.db, "study", study, "litigation 42", "cli:test", now)
    with pytest.raises(Forbidden, match=rf"legal hold .*hold {hold.id} on study"):
        delete(s, Target(study), override=True, reason="admin insists")
    deletion.release_holds(s.db, "study", study, "cli:test", "settled", now)
    deletion.place_hold(s.db, "patient", "PHOLD", "subpoena", "cli:test", now)
    for uid in (study, other):
        with pytest.raises(Forbidden, match="on a patient: subpoena"):
            delete(s, Target(uid), override=True, reason="admin insists")
    assert [h.kind for h in deletion.list_holds(s.db.reader())] == ["patient"]
    deletion.release_holds(s.db, "patient", "PHOLD", "cli:test", "", now)
    assert delete(s, Target(other)).instances == 3
    with pytest.raises(NotFound, match="no legal hold"):
        deletion.release_holds(s.db, "patient", "PHOLD", "cli:test", "", now)


def test_a_deleted_instance_sent_again_is_refused_until_purged(s: Site, tmp_path: Path) -> None:
    study = s.add_study(instances=1, study_date="20000101")
    (path,) = sorted((tmp_path / "incoming" / "s1").glob("*.dcm"))
    delete(s, Target(study))
    with pytest.raises(InstanceDeleted):
        s.ingestor.ingest_path(path, Origin("import"))
    assert s.states(study) == {"deleted": 1}
    # after the purge (the sync agent's; here by hand) the UID is free: a new instance
    (row,) = instance_rows(s, study)
    (s.cache.root / row["path"]).unlink()
    with s.db.write() as conn:
        assert transition(conn, row["id"], State.DELETED, State.PURGING)
        assert transition(conn, row["id"], State.PURGING, State.PURGED)
    with pytest.raises(Conflict, match="purged"):
        deletion.undelete(s.db, Target(study), TECH)
    assert s.ingestor.ingest_path(path, Origin("import")).outcome.value == "stored"
    assert s.states(study) == {"cached": 1}
    (st,) = find(s, "STUDY", StudyInstanceUID=study, NumberOfStudyRelatedInstances="")
    assert st["NumberOfStudyRelatedInstances"] == 1


def test_rows_mid_work_are_waited_for_then_refused(s: Site) -> None:
    study = s.add_study(instances=1, study_date="20000101")
    (row,) = instance_rows(s, study)
    with s.db.write() as conn:
        transition(conn, row["id"], State.CACHED, State.UPLOADING)
    t0 = time.monotonic()
    with pytest.raises(InstanceBusy, match="try again"):
        delete(s, Target(study), busy_wait_s=0.3)
    assert time.monotonic() - t0 >= 0.3
    assert s.states(study) == {"uploading": 1}
