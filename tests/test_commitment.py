"""Storage Commitment Push: N-ACTION from a pynetdicom modality, N-EVENT-REPORT back on the
same association or on a new one to the modality's registered address."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel

from edge.commitment import (
    COMMIT_WORKERS,
    COMMITMENT_INSTANCE,
    EVENT_ALL_COMMITTED,
    EVENT_FAILURES_EXIST,
    NO_SUCH_OBJECT_INSTANCE,
)
from edge.server import EdgeServer
from shared.errors import PROCESSING_FAILURE, REFUSED_NOT_AUTHORIZED, SUCCESS
from shared.synthetic import StudySpec, uid, write_study
from tests.support.net import wait_for
from tests.support.retrieve import Recorder, load, pynetdicom_destination, register

UNKNOWN_UID = "1.2.826.0.1.3680043.10.1255.999.1"


def _request(pairs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = uid()
    items = []
    for cls, inst in pairs:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = inst
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


@contextmanager
def modality(
    edge: EdgeServer, ae_title: str, rec: Recorder, waits: bool = True
) -> Iterator[Association]:
    """A modality; `waits`: it proposes the SCP role to get reports on this association."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    assoc = ae.associate(
        "127.0.0.1",
        edge.ports[0],
        ae_title="HPACS",
        ext_neg=[role] if waits else [],
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, rec.on_report)],
    )
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _action(assoc: Association, request: Dataset) -> int:
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    return int(status.Status)


def _stored(edge: EdgeServer, tmp_path: Path, n: int = 2) -> list[tuple[str, str]]:
    files = write_study(StudySpec(instances_per_series=n), tmp_path / "in")
    load(edge, files)
    return [(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in map(pydicom.dcmread, files)]


def test_report_on_same_association_lists_failures(edge: EdgeServer, tmp_path: Path) -> None:
    pairs = _stored(edge, tmp_path)
    request = _request([*pairs, (pairs[0][0], UNKNOWN_UID)])
    rec = Recorder()
    with modality(edge, "STORESCU", rec) as assoc:
        assert _action(assoc, request) == SUCCESS
        assert rec.got_report.wait(10)
    event_type, info = rec.reports[0]
    assert event_type == EVENT_FAILURES_EXIST
    assert info.TransactionUID == request.TransactionUID
    ok = {str(i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence}
    assert ok == {p[1] for p in pairs}
    (failed,) = info.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == UNKNOWN_UID
    assert failed.FailureReason == NO_SUCH_OBJECT_INSTANCE


def test_corrupted_file_is_a_processing_failure(edge: EdgeServer, tmp_path: Path) -> None:
    pairs = _stored(edge, tmp_path)
    row = (
        edge.db.reader()
        .execute("SELECT path FROM instances WHERE sop_instance_uid = ?", (pairs[1][1],))
        .fetchone()
    )
    path = edge.cache.path(row["path"])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    rec = Recorder()
    with modality(edge, "STORESCU", rec) as assoc:
        assert _action(assoc, _request(pairs)) == SUCCESS
        assert rec.got_report.wait(10)
    _, info = rec.reports[0]
    (failed,) = info.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == pairs[1][1]
    assert failed.FailureReason == PROCESSING_FAILURE
    # never uploaded, so no intact copy is left: quarantined and lost (a resend revives it)
    state = (
        edge.db.reader()
        .execute("SELECT state FROM instances WHERE sop_instance_uid = ?", (pairs[1][1],))
        .fetchone()[0]
    )
    assert state == "lost" and not path.exists()
    assert [p.read_bytes() for p in (edge.cache.root / "quarantine").glob("*.dcm")] == [data]


def test_report_on_new_association_after_release(edge: EdgeServer, tmp_path: Path) -> None:
    pairs = _stored(edge, tmp_path)
    with pynetdicom_destination(ae_title="MODALITY") as (port, listener):
        register(edge, "MODALITY", port, ["store", "commit"])
        rec = Recorder()
        with modality(edge, "MODALITY", rec, waits=False) as assoc:
            assert _action(assoc, _request(pairs)) == SUCCESS
        # released at once: the edge calls the modality back at its registered address
        assert listener.got_report.wait(10)
        wait_for(lambda: listener.associations >= 1, what="report association")
    event_type, info = listener.reports[0]
    assert event_type == EVENT_ALL_COMMITTED
    assert {str(i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence} == {
        p[1] for p in pairs
    }
    assert "FailedSOPSequence" not in info


def test_commit_without_permission_refused(edge: EdgeServer, tmp_path: Path) -> None:
    pairs = _stored(edge, tmp_path, n=1)
    register(edge, "NOCOMMIT", 104, ["store"])
    rec = Recorder()
    with modality(edge, "NOCOMMIT", rec) as assoc:
        assert _action(assoc, _request(pairs)) == REFUSED_NOT_AUTHORIZED
    assert rec.reports == []


def test_n_actions_are_verified_on_a_bounded_shared_pool(
    edge: EdgeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each N-ACTION used to start a thread of its own (named after its transaction): a burst
    of requests meant a burst of threads. Now the association's own thread verifies and
    reports (edge/dimse owns each socket with one thread), so no thread is started for it."""
    pairs = _stored(edge, tmp_path, n=1)
    rec = Recorder()
    n = 3 * COMMIT_WORKERS
    with (
        caplog.at_level(logging.INFO, logger="hpacs.edge.commitment"),
        modality(edge, "STORESCU", rec) as assoc,
    ):
        for i in range(n):
            assert _action(assoc, _request(pairs)) == SUCCESS
            # the next N-ACTION once this report's N-EVENT-REPORT-RSP is back (the edge logs
            # after it): a request crossing a report on the same association is another matter
            wait_for(lambda i=i: len(_reported(caplog)) > i, 10, "report")  # type: ignore[misc]
    workers = {r.threadName for r in _reported(caplog)}
    assert len(rec.reports) == n
    assert 1 <= len(workers) <= COMMIT_WORKERS, workers
    # the association's own thread (edge/dimse: it owns the socket) reports, or the retrier
    assert all(w in ("dimse", "commit-retry") for w in workers), workers


def _reported(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "commitment reported" in r.getMessage()]
