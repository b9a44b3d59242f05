"""The soak's load: four modalities, each one pynetdicom association sending synthetic studies,
and the ledger of every instance the edge acknowledged (status 0x0000) with its bytes' SHA-256.

Each instance is written as a Part-10 file and sent from the file unparsed
(`STORE_SEND_CHUNKED_DATASET`), so the hashed bytes are exactly the dataset bytes on the wire.
A sender that loses its association (the edge was killed) reconnects and sends the same
instance again, as a modality would; only a 0x0000 answer puts it in the ledger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import struct
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, _config

from shared.synthetic import StudySpec, iter_study

_config.STORE_SEND_CHUNKED_DATASET = True  # send the file's dataset bytes as they are
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # aborts are expected here

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


def dataset_offset(data: bytes) -> int:
    """Where the dataset starts in Part-10 bytes: after the preamble, `DICM` and the file meta
    group (explicit VR little endian), whoever wrote that group."""
    if data[128:132] != b"DICM":
        raise ValueError("not a Part-10 file")
    pos = 132
    try:
        while pos + 8 <= len(data):
            group = struct.unpack_from("<H", data, pos)[0]
            if group != 0x0002:
                return pos
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
            else:
                pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    except struct.error as exc:
        raise ValueError("file meta runs past the end") from exc
    raise ValueError("no dataset after the file meta")


def dataset_sha256(data: bytes) -> str:
    return hashlib.sha256(data[dataset_offset(data) :]).hexdigest()


@dataclass(frozen=True)
class Acked:
    sop: str
    study: str
    series: str
    sha256: str
    size: int
    at: float  # time.time() of the 0x0000
    sender: str


class Ledger:
    """Acknowledged instances (also appended to a JSONL file) and every other outcome counted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.acked: dict[str, Acked] = {}
        self.studies: dict[str, list[str]] = {}
        self.outcomes: Counter[str] = Counter()  # "0xA700", "no response", "resent", ...
        self._fh = open(path, "a")  # noqa: SIM115 - closed by close()

    def ack(self, a: Acked) -> None:
        with self._lock:
            if a.sop in self.acked:
                return
            self.acked[a.sop] = a
            self.studies.setdefault(a.study, []).append(a.sop)
            self._fh.write(json.dumps(asdict(a)) + "\n")

    def count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def snapshot(self) -> tuple[dict[str, Acked], dict[str, list[str]]]:
        with self._lock:
            return dict(self.acked), {k: list(v) for k, v in self.studies.items()}

    def close(self) -> None:
        with self._lock:
            self._fh.close()


class RateLimit:
    """A token bucket shared by the senders; rate 0 means no limit."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, stop: threading.Event) -> None:
        if self.per_s <= 0:
            return
        with self._lock:
            now = time.monotonic()
            at = max(self._next, now)
            self._next = at + 1.0 / self.per_s
        if at > now:
            stop.wait(at - now)  # pacing the load, not synchronising


@dataclass
class Pending:
    path: Path
    sop: str
    study: str
    series: str
    sha256: str
    size: int


def make_study(rng: random.Random, n: int, spool: Path, max_instances: int) -> list[Pending]:
    """A synthetic study of random shape written to the spool; the files and their hashes."""
    mr = rng.random() < 0.3
    side = rng.choices([64, 128, 256], weights=[3, 3, 1])[0]
    series = rng.randint(1, 3)
    spec = StudySpec(
        patient_id=f"SOAK{n:06d}",
        patient_name="SOAK^TEST",
        accession_number=f"S{n:06d}",
        study_description="SOAK MR" if mr else "SOAK CT",
        modality="MR" if mr else "CT",
        sop_class_uid=str(MRImageStorage if mr else CTImageStorage),
        series_count=series,
        instances_per_series=rng.randint(2, max(2, max_instances // series)),
        rows=side,
        columns=side,
    )
    out = []
    for ds in iter_study(spec):
        p = spool / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(p, enforce_file_format=True)
        data = p.read_bytes()
        out.append(
            Pending(
                p,
                str(ds.SOPInstanceUID),
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                dataset_sha256(data),
                len(data),
            )
        )
    return out


class Sender(threading.Thread):
    """One modality: one association at a time, studies one after another."""

    MAX_TRIES = 20  # per instance, then the modality gives up on it (counted, never acked)

    def __init__(
        self,
        ae_title: str,
        edge: tuple[str, int, str],
        ledger: Ledger,
        spool: Path,
        seed: int,
        limit: RateLimit,
        stop: threading.Event,
        max_instances: int = 30,
    ) -> None:
        super().__init__(name=f"sender-{ae_title}", daemon=True)
        self.ae_title = ae_title
        self.host, self.port, self.called = edge
        self.ledger = ledger
        self.spool = spool / ae_title
        self.spool.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.limit = limit
        self.stop_event = stop
        self.max_instances = max_instances
        self.studies = 0
        self.ae = AE(ae_title=ae_title)
        for sop_class in (CTImageStorage, MRImageStorage):
            self.ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        self.ae.acse_timeout = self.ae.connection_timeout = 10
        self.ae.dimse_timeout = self.ae.network_timeout = 60
        self.assoc: Any = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.studies += 1
                n = self.studies * 10 + int(self.ae_title[-1])
                for inst in make_study(self.rng, n, self.spool, self.max_instances):
                    if not self.stop_event.is_set():
                        self._deliver(inst)
                    inst.path.unlink(missing_ok=True)
        finally:
            if self.assoc is not None and self.assoc.is_established:
                self.assoc.release()
            self.ae.shutdown()

    def _deliver(self, inst: Pending) -> None:
        for attempt in range(self.MAX_TRIES):
            self.limit.take(self.stop_event)
            if not self._connect():
                return  # stopping
            if attempt:
                self.ledger.count("resent")
            try:
                rsp = self.assoc.send_c_store(inst.path)
            except Exception as exc:  # the association died under us
                self.ledger.count(f"send error {type(exc).__name__}")
                rsp = None
            status = getattr(rsp, "Status", None) if rsp is not None else None
            if status == 0x0000:
                self.ledger.ack(
                    Acked(
                        inst.sop,
                        inst.study,
                        inst.series,
                        inst.sha256,
                        inst.size,
                        time.time(),
                        self.ae_title,
                    )
                )
                return
            self.ledger.count("no response" if status is None else f"status 0x{status:04X}")
            if status is None and self.assoc is not None and self.assoc.is_established:
                self.assoc.abort()
        self.ledger.count("given up")

    def _connect(self) -> bool:
        """An established association, reconnecting with backoff; False once stopping."""
        delay = 0.2
        while not self.stop_event.is_set():
            if self.assoc is not None and self.assoc.is_established:
                return True
            self.assoc = self.ae.associate(self.host, self.port, ae_title=self.called)
            if self.assoc.is_established:
                return True
            self.ledger.count("association refused or failed")
            self.stop_event.wait(delay)  # the edge is restarting: retry with backoff
            delay = min(delay * 2, 2.0)
        return False
