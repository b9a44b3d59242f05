"""A disaster-recovery restore after deletions answers as the lost edge did (invariant 5 with
deletion): studies stored with storescu, one deleted within its grace, one purged, one
instance of another deleted; the edge's index and cache are lost; `hpacs-sync restore` rebuilds
the index from the catalog journal alone; DCMTK findscu gets the same answers at every level,
and the study deleted within its grace can still be undeleted."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom

from shared.deletion import Actor, Target, delete
from shared.synthetic import StudySpec, write_study
from sync.agent import Agent
from sync.purge import Purger
from tests.support.dcmtk import run
from tests.support.edge import cli, edge_config, running_edge
from tests.support.sync import ROOT, sync_config, write_config

DAY = 86400.0


def answers(port: int) -> dict[str, Any]:
    """C-FIND at STUDY (with counts), SERIES and IMAGE level: what a workstation sees."""
    out: dict[str, Any] = {}
    for level, keys in (
        ("STUDY", ["StudyInstanceUID", "NumberOfStudyRelatedInstances",
                   "NumberOfStudyRelatedSeries", "ModalitiesInStudy"]),
        ("SERIES", ["StudyInstanceUID", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances"]),
        ("IMAGE", ["StudyInstanceUID", "SOPInstanceUID"]),
    ):  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            args = ["-S", "-aet", "FINDSCU", "-aec", "HPACS", "-X", "-od", tmp,
                    "-k", f"QueryRetrieveLevel={level}"]  # fmt: skip
            for k in keys:
                args += ["-k", k]
            r = run("findscu", *args, "127.0.0.1", port)
            assert r.returncode == 0, r.stderr
            rows = [pydicom.dcmread(p) for p in Path(tmp).glob("rsp*.dcm")]
            out[level] = sorted(tuple(str(ds.get(k, "")) for k in keys) for ds in rows)
    return out


def test_restore_after_deletes_gives_the_same_answers(tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    data = edge_config(tmp_path)
    data["sync"] = sync_config(tmp_path, bucket, site="drsite")["sync"]
    config = write_config(tmp_path, data)
    uids = {}
    for label in "ABCD":
        files = write_study(StudySpec(instances_per_series=3, series_count=2), tmp_path / label)
        uids[label] = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with running_edge(data) as edge:
        files = sorted(tmp_path.glob("[ABCD]/*.dcm"))
        r = run("storescu", "-aec", "HPACS", "127.0.0.1", edge.ports[0], *files)
        assert r.returncode == 0, r.stderr
        agent = Agent(edge.cfg, edge.db)
        try:
            agent.drain()
            cfg, db, cache = edge.cfg, edge.db, edge.cache.root
            who = Actor("test")
            delete(db, cache, cfg.retention, Target(uids["B"]), who)  # within its grace
            past = time.time() - 8 * DAY
            delete(db, cache, cfg.retention, Target(uids["C"]), who, clock=lambda: past)
            one = (
                db.reader()
                .execute(
                    "SELECT i.sop_instance_uid FROM instances i JOIN studies s "
                    "ON s.id = i.study_id WHERE s.study_uid = ? LIMIT 1",
                    (uids["D"],),
                )
                .fetchone()[0]
            )
            delete(db, cache, cfg.retention, Target(uids["D"], sop_instance_uid=one), who)
            assert Purger(cfg, db, agent.store, cache, agent.catalog).run().purged == 6
            agent.catalog.flush()
        finally:
            agent.close()
        before = answers(edge.ports[0])
    assert {row[0] for row in before["STUDY"]} == {uids["A"], uids["D"]}
    assert len(before["IMAGE"]) == 6 + 5

    shutil.rmtree(data["edge"]["data_dir"])  # the edge is lost: cache and index
    restored = subprocess.run(
        [sys.executable, "-m", "sync.cli", "--config", str(config), "restore", "--site", "drsite"],
        cwd=str(ROOT), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    # A, B (deleted, within its grace) and D; C was purged
    assert "restored 18 instances" in restored.stdout and "7 deleted" in restored.stdout
    with running_edge(data) as edge:
        assert answers(edge.ports[0]) == before
    # the deletion within its grace goes on where it was: undeletable
    r = cli(config, "studies", "undelete", uids["B"])
    assert r.returncode == 0, r.stderr
    with running_edge(data) as edge:
        after = answers(edge.ports[0])
    assert {row[0] for row in after["STUDY"]} == {uids["A"], uids["B"], uids["D"]}
