"""Issue 12, defect 1: damaged cache bytes are never served silently.

One byte of a cache file is flipped at rest, then the file is read the ways hpacs reads it:
C-MOVE (DCMTK movescu -> edge -> DCMTK storescp, and pynetdicom for the failed-UID list), the
upload, Storage Commitment. A synced file is quarantined and replaced from its verified cloud
copy; one damaged before its upload fails that one sub-operation with its UID and the
instance is `lost` until it is sent again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pydicom
import pytest

from edge.forwarder import dimse_sender
from edge.locate import InstanceRef, Locator
from edge.routequeue import Job
from shared.errors import CorruptInstance
from shared.registry import Node
from shared.rows import Origin
from shared.store import open_store
from tests.support.damage import Rig, dataset_of, destination, flip_byte, messages, rig
from tests.support.dcmtk import movescu, run
from tests.support.retrieve import dataset_bytes, move, study_identifier, uid_list

FAILED_SUBOPS_WARNING = 0xB000


def _received(out: Path) -> dict[str, bytes]:
    return {str(pydicom.dcmread(p).SOPInstanceUID): dataset_bytes(p) for p in out.iterdir()}


def test_cmove_serves_the_verified_cloud_copy_of_a_damaged_synced_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with rig(tmp_path, f"file://{tmp_path / 'bucket'}") as r:
        uid = r.site.add_study(5)
        rows = r.rows(uid)
        originals = {row["sop_instance_uid"]: r.cache_file(row).read_bytes() for row in rows}
        agent = r.site.agent()
        try:
            agent.drain()
        finally:
            agent.close()
        assert r.site.states(uid) == {"synced": 5}
        victim = rows[2]
        damaged = flip_byte(r.cache_file(victim))

        out = tmp_path / "received"
        with destination(r.dest_port, out):
            res = movescu(r.server.ports[0], "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}")
        assert res.returncode == 0, res.stderr

        # the destination got the intact bytes of every instance, the damaged one from the bucket
        got = _received(out)
        assert set(got) == set(originals)
        for sop, raw in originals.items():
            assert got[sop] == dataset_of(raw, tmp_path / "orig.dcm"), sop
        sop = victim["sop_instance_uid"]
        row = r.row(sop)
        assert row["state"] == "synced"
        assert r.cache_file(row).read_bytes() == originals[sop]
        # the damaged file is kept in quarantine with its reason, one event, one WARNING line
        (q,) = r.quarantined()
        assert q.read_bytes() == damaged
        reason = q.with_suffix(".reason").read_text()
        assert sop in reason and "cloud copy" in reason
        (event,) = r.events()
        assert sop in event and "next=refetch" in event
        (line,) = messages(caplog, logging.WARNING, "damaged cache file quarantined")
        assert sop in line and victim["path"] in line and "fetching the verified cloud copy" in line


def test_cmove_fails_only_the_sub_operation_of_a_file_damaged_before_sync(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with rig(tmp_path, f"file://{tmp_path / 'bucket'}") as r:
        uid = r.site.add_study(3)
        rows = r.rows(uid)
        victim = rows[1]
        sop = victim["sop_instance_uid"]
        damaged = flip_byte(r.cache_file(victim))

        out = tmp_path / "received"
        with destination(r.dest_port, out):
            rsps = move(r.server, study_identifier(uid), "STORESCP")
        status, ident, final = rsps[-1]
        assert status == FAILED_SUBOPS_WARNING
        assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
        assert ident is not None and uid_list(ident.FailedSOPInstanceUIDList) == [sop]
        assert set(_received(out)) == {row["sop_instance_uid"] for row in rows} - {sop}

        assert r.row(sop)["state"] == "lost"
        (q,) = r.quarantined()
        assert q.read_bytes() == damaged and not r.cache_file(victim).exists()
        (event,) = r.events()
        assert sop in event and "next=lost" in event
        (line,) = messages(caplog, logging.ERROR, "damaged cache file quarantined")
        assert sop in line and "send the study again" in line

        # the uploader does not loop on it: the others sync, the lost one is left alone
        agent = r.site.agent()
        try:
            agent.drain()
        finally:
            agent.close()
        assert r.site.states(uid) == {"synced": 2, "lost": 1}


def test_upload_of_a_damaged_file_marks_it_lost_at_once_and_a_resend_revives_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with rig(tmp_path, f"file://{tmp_path / 'bucket'}", max_attempts=8) as r:
        uid = r.site.add_study(3)
        rows = r.rows(uid)
        victim = rows[0]
        sop = victim["sop_instance_uid"]
        original = r.cache_file(victim).read_bytes()
        flip_byte(r.cache_file(victim))
        agent = r.site.agent()
        try:
            agent.drain()
            row = r.row(sop)
            assert (row["state"], row["attempts"]) == ("lost", 1)  # one attempt, no retry loop
            assert "damaged" in row["last_error"]
            assert r.site.states(uid) == {"synced": 2, "lost": 1}
            assert len(list(agent.store.list("instances/"))) == 2  # nothing damaged uploaded
            (line,) = messages(caplog, logging.ERROR, "damaged cache file quarantined")
            assert sop in line and "detected_by=upload" in line and "send the study again" in line
            assert len(r.quarantined()) == 1 and len(r.events()) == 1

            # the modality sends it again: the row is revived and uploaded
            resent = tmp_path / "resent.dcm"
            resent.write_bytes(original)
            r.site.ingestor.ingest_path(resent, Origin("import"))
            assert r.row(sop)["state"] == "cached"
            agent.drain()
        finally:
            agent.close()
        row = r.row(sop)
        assert row["state"] == "synced"
        assert open_store(f"file://{tmp_path / 'bucket'}").open(row["object_key"]).read() == (
            original
        )


def _synced_study(r: Rig, n: int) -> tuple[str, list[Any], dict[str, bytes]]:
    uid = r.site.add_study(n)
    rows = r.rows(uid)
    originals = {row["sop_instance_uid"]: r.cache_file(row).read_bytes() for row in rows}
    agent = r.site.agent()
    try:
        agent.drain()
    finally:
        agent.close()
    return uid, rows, originals


def test_cget_and_routing_send_the_cloud_copy_of_a_damaged_synced_file(tmp_path: Path) -> None:
    with rig(tmp_path, f"file://{tmp_path / 'bucket'}") as r:
        uid, rows, originals = _synced_study(r, 3)
        flip_byte(r.cache_file(rows[0]))
        # C-GET (DCMTK getscu): every instance intact
        fetched = tmp_path / "fetched"
        fetched.mkdir()
        res = run(
            "getscu", "-S", "-aet", "GETSCU", "-aec", "HPACS", "-od", fetched,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
            "127.0.0.1", r.server.ports[0],
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        got = _received(fetched)
        for sop, raw in originals.items():
            assert got[sop] == dataset_of(raw, tmp_path / "orig.dcm")
        assert r.site.states(uid) == {"synced": 3}

        # routing (the forwarder's sender) to a DCMTK storescp: the same
        flip_byte(r.cache_file(rows[1]))
        send = dimse_sender("HPACS", r.server.db, r.server.cache, recaller=r.server.recaller)
        node = Node("STORESCP", "127.0.0.1", r.dest_port)
        batch = [
            Job(i, "r", "STORESCP", uid, row["sop_instance_uid"], 0, 3, row["path"], "synced")
            for i, row in enumerate(rows)
        ]
        out = tmp_path / "routed"
        with destination(r.dest_port, out):
            results = send(node, batch)
        assert all(res.ok for res in results.values())
        got = _received(out)
        for sop, raw in originals.items():
            assert got[sop] == dataset_of(raw, tmp_path / "orig.dcm")
        assert len(r.quarantined()) == 2 and len(r.events()) == 2
        assert r.site.states(uid) == {"synced": 3}


def test_a_verifying_stream_quarantines_and_repairs_before_it_reports_the_damage(
    tmp_path: Path,
) -> None:
    """`Locator.open`, the stream the new DIMSE send path reads: the damage is reported at the
    end of the stream (nothing complete was handed over), and the next read is the repair."""
    with rig(tmp_path, f"file://{tmp_path / 'bucket'}") as r:
        _, rows, originals = _synced_study(r, 2)
        flip_byte(r.cache_file(rows[0]))
        locator = Locator(r.server.db, r.server.cache, r.server.recaller)
        ref = InstanceRef.from_row(r.row(rows[0]["sop_instance_uid"]))
        with pytest.raises(CorruptInstance), locator.open(ref) as stream:
            while stream.read(4096):
                pass
        assert len(r.quarantined()) == 1
        assert r.row(ref.sop_instance_uid)["state"] == "synced"
        assert locator.read(ref) == originals[ref.sop_instance_uid]
        locator.verify(ref)  # Storage Commitment: held intact
