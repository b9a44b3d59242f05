"""The soak's query/retrieve side: C-FIND and C-MOVE as SOAKQR (pynetdicom, status per
request), DCMTK storescp as the move destination (bit-preserving), QIDO-RS on the cloud API,
and a mid-run retriever that moves studies while the faults happen.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soak_load import Acked, Ledger, dataset_sha256

from tests.support.net import port_open, wait_for


@dataclass
class MoveResult:
    status: int | None  # final status; None: no final response (association lost)
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    seconds: float = 0.0


class QR:
    """One association for C-FIND and C-MOVE, re-opened when it is lost."""

    def __init__(self, calling: str, edge: tuple[str, int, str], dest_ae: str) -> None:
        self.host, self.port, self.called = edge
        self.dest_ae = dest_ae
        self.ae = AE(ae_title=calling)
        self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        self.ae.acse_timeout = self.ae.connection_timeout = 10
        self.ae.dimse_timeout = self.ae.network_timeout = 300
        self.assoc: Any = None
        # Pending C-FIND responses that pynetdicom handed over without an identifier (it could
        # not decode one, or lost it): a client-side fault, told apart from a missing match.
        self.pending_without_identifier = 0

    def _assoc(self) -> Any:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate(self.host, self.port, ae_title=self.called)
        if not self.assoc.is_established:
            raise ConnectionError("association with the edge refused or failed")
        return self.assoc

    def find_sops(self, study: str) -> set[str]:
        """SOP Instance UIDs the edge's C-FIND returns at IMAGE level for a study."""
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study
        q.SeriesInstanceUID = ""
        q.SOPInstanceUID = ""
        found: set[str] = set()
        status = None
        for st, ident in self._assoc().send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
            status = getattr(st, "Status", None)
            if status in (0xFF00, 0xFF01):
                if ident is None:
                    self.pending_without_identifier += 1
                else:
                    found.add(str(ident.SOPInstanceUID))
        if status != 0x0000:
            raise RuntimeError(f"C-FIND of study {study} ended with status {status}")
        return found

    def move_study(self, study: str) -> MoveResult:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = study
        t0 = time.monotonic()
        res = MoveResult(None)
        try:
            for st, ident in self._assoc().send_c_move(
                q, self.dest_ae, StudyRootQueryRetrieveInformationModelMove
            ):
                status = getattr(st, "Status", None)
                if status is None or status in (0xFF00, 0xFF01):
                    continue
                res.status = int(status)
                res.completed = int(getattr(st, "NumberOfCompletedSuboperations", 0) or 0)
                res.failed = int(getattr(st, "NumberOfFailedSuboperations", 0) or 0)
                res.warning = int(getattr(st, "NumberOfWarningSuboperations", 0) or 0)
                uids = getattr(ident, "FailedSOPInstanceUIDList", None) if ident else None
                if uids:
                    res.failed_uids = [str(u) for u in ([uids] if isinstance(uids, str) else uids)]
        except (ConnectionError, RuntimeError):
            pass  # no association: res.status stays None
        res.seconds = time.monotonic() - t0
        return res

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.ae.shutdown()


class Destination:
    """DCMTK storescp as the move destination, writing `<modality>.<SOP UID>` files."""

    def __init__(self, ae_title: str, port: int, out: Path, log: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            ["storescp", "-aet", ae_title, "-od", str(out), "+B", str(port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, TCP_NODELAY="1"),
            start_new_session=True,
        )
        wait_for(lambda: port_open(port), 10, "storescp")

    def take(self) -> dict[str, bytes]:
        """Everything received since the last call, by SOP Instance UID; the files go away."""
        got: dict[str, bytes] = {}
        for p in list(self.out.iterdir()):
            if p.is_file() and "." in p.name:
                got[p.name.split(".", 1)[1]] = p.read_bytes()
                p.unlink()
        return got

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def compare(received: dict[str, bytes], expected: list[Acked]) -> tuple[int, list[str], list[str]]:
    """(identical, missing SOP UIDs, SOP UIDs whose dataset bytes differ)."""
    same, missing, differ = 0, [], []
    for a in expected:
        data = received.get(a.sop)
        if data is None:
            missing.append(a.sop)
        elif dataset_sha256(data) == a.sha256:
            same += 1
        else:
            differ.append(a.sop)
    return same, missing, differ


def qido_sops(base_url: str, token: str, study: str) -> set[str]:
    """SOP Instance UIDs QIDO-RS on the cloud API lists for a study (empty when it has none)."""
    req = urllib.request.Request(
        f"{base_url}/dicomweb/studies/{study}/instances",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return set()
        raise
    if not body:
        return set()
    return {str(item["00080018"]["Value"][0]) for item in json.loads(body)}


def http_status(base_url: str, token: str, study: str) -> str:
    """The status of a QIDO-RS request, for requests expected to be refused."""
    req = urllib.request.Request(
        f"{base_url}/dicomweb/studies/{study}/instances",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return str(r.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except OSError as exc:
        return type(exc).__name__


class Reader(threading.Thread):
    """While the soak runs, every so often and for one random study (half of the time one that
    just had a cache file corrupted, so the damage meets a reader): C-FIND, C-MOVE, QIDO-RS,
    and a QIDO-RS with a wrong token (the cloud's audit trail grows during the outages too).

    Failures are expected while the edge or the bucket is down. Defects, listed in `problems`:
    a C-FIND that succeeds without an acknowledged instance (the index is local, invariant 3),
    a C-MOVE delivering bytes other than the acknowledged ones, and a C-MOVE answering success
    while acknowledged instances did not arrive."""

    def __init__(
        self,
        qr: QR,
        dest: Destination,
        ledger: Ledger,
        cloud: tuple[str, str],  # base URL, admin token
        rate_per_min: float,
        seed: int,
        stop: threading.Event,
        corrupted_studies: Callable[[], list[str]],
    ) -> None:
        super().__init__(name="reader", daemon=True)
        self.qr, self.dest, self.ledger, self.cloud = qr, dest, ledger, cloud
        self.rate_per_min = rate_per_min
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.corrupted_studies = corrupted_studies
        self.stats: Counter[str] = Counter()
        self.problems: list[str] = []
        self.moves: list[str] = []  # one line per C-MOVE, written to reads.log

    def run(self) -> None:
        if self.rate_per_min <= 0:
            return
        while not self.stop_event.wait(self.rng.expovariate(self.rate_per_min / 60.0)):
            acked, studies = self.ledger.snapshot()
            if not studies:
                continue
            damaged = [s for s in self.corrupted_studies() if s in studies]
            pick = damaged if damaged and self.rng.random() < 0.5 else list(studies)
            study = self.rng.choice(pick)
            expected = [acked[s] for s in studies[study]]
            self._find(study, expected)
            self._move(study, expected)
            self._qido(study)
        self.qr.close()

    def _find(self, study: str, expected: list[Acked]) -> None:
        try:
            found = self.qr.find_sops(study)
        except Exception:  # the edge is down or restarting
            self.stats["C-FIND failed (faults)"] += 1
            return
        self.stats["C-FIND"] += 1
        missed = [a.sop for a in expected if a.sop not in found]
        if missed:
            self.problems.append(f"C-FIND of {study} missed acknowledged {missed[:3]}")

    def _move(self, study: str, expected: list[Acked]) -> None:
        self.dest.take()  # nothing left over from an earlier move
        res = self.qr.move_study(study)
        same, missing, differ = compare(self.dest.take(), expected)
        self.stats["C-MOVE"] += 1
        self.stats["C-MOVE identical"] += same
        self.stats["C-MOVE missing (faults)"] += len(missing)
        self.stats["C-MOVE without final status"] += res.status is None
        status = "none" if res.status is None else f"0x{res.status:04X}"
        self.moves.append(
            f"{time.time():.3f} {study} status={status} completed={res.completed} "
            f"failed={res.failed} expected={len(expected)} identical={same} "
            f"missing={len(missing)} differ={len(differ)} seconds={res.seconds:.2f}"
        )
        for sop in differ:
            self.problems.append(f"C-MOVE of {study} delivered other bytes for {sop}")
        if missing and res.status == 0x0000:
            self.problems.append(
                f"C-MOVE of {study} answered success but {len(missing)} acknowledged "
                f"instances did not arrive, e.g. {missing[0]}"
            )

    def _qido(self, study: str) -> None:
        try:
            qido_sops(*self.cloud, study)
            self.stats["QIDO-RS answered"] += 1
        except (OSError, ValueError):
            self.stats["QIDO-RS failed"] += 1
        self.stats[f"QIDO-RS wrong token: {http_status(self.cloud[0], 'hpacs_wrong', study)}"] += 1
