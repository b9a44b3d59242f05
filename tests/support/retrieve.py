"""Peers and helpers for retrieve tests: destinations that record what reaches them."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.sop_class import (
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from edge.contexts import STORAGE_SOP_CLASSES
from edge.server import EdgeServer
from shared import synthetic
from shared.registry import Node, upsert_node
from shared.rows import Origin
from shared.synthetic import StudySpec, make_instance, write_study
from tests.support.dcmtk import running_storescp
from tests.support.net import free_port


def tune(event: evt.Event) -> None:
    """EVT_CONN_OPEN of a pynetdicom test peer: TCP_NODELAY, as DCMTK peers get through the
    environment (Nagle plus delayed ACKs cost ~40 ms per small response)."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


ALL_PERMISSIONS = frozenset({"echo", "store", "find", "move", "get", "commit"})
UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def register(
    edge: EdgeServer, ae_title: str, port: int, permissions: Sequence[str] = ("store",)
) -> None:
    with edge.db.write() as conn:
        upsert_node(conn, Node(ae_title, "127.0.0.1", port, permissions=frozenset(permissions)))


def load(edge: EdgeServer, files: Sequence[Path]) -> None:
    """Put files into the edge through its one ingest path."""
    for f in files:
        edge.ingestor.ingest_path(f, Origin("import"))


def load_study(edge: EdgeServer, tmp_path: Path, n: int = 4, **spec: Any) -> tuple[str, list[Path]]:
    """A synthetic study of `n` instances per series, ingested; returns its UID and files."""
    files = write_study(StudySpec(instances_per_series=n, **spec), tmp_path / "in")
    load(edge, files)
    return str(pydicom.dcmread(files[0]).StudyInstanceUID), files


def assert_received_identical(out: Path, files: Sequence[Path]) -> None:
    """Every sent file arrived in `out` exactly once, its dataset bytes unchanged."""
    received = {pydicom.dcmread(p).SOPInstanceUID: p for p in out.iterdir()}
    assert len(received) == len(files)
    for f in files:
        assert dataset_bytes(received[pydicom.dcmread(f).SOPInstanceUID]) == dataset_bytes(f)


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta: what a peer sent, independent of who wrote the meta."""
    with open(path, "rb") as fh:
        read_preamble(fh, False)
        _read_file_meta_info(fh)
        return fh.read()


@dataclass
class DcmtkPeer:
    port: int
    log: str = ""  # storescp's output, filled in when the peer has stopped

    @property
    def associations(self) -> int:
        return self.log.count("Association Acknowledged")


@contextmanager
def dcmtk_destination(
    edge: EdgeServer, out_dir: Path, ae_title: str = "STORESCP", *options: str
) -> Iterator[DcmtkPeer]:
    """A DCMTK storescp (verbose) registered on the edge as a move destination."""
    port = free_port()
    peer = DcmtkPeer(port)
    with running_storescp(port, out_dir, ae_title, "-v", *options) as scp:
        register(edge, ae_title, port)
        yield peer
    peer.log = scp.log


@dataclass
class Recorder:
    """What a pynetdicom peer saw: associations and received (SOP UID, syntax, bytes)."""

    associations: int = 0
    received: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    reports: list[tuple[int, object]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    got_report: threading.Event = field(default_factory=threading.Event)

    def on_established(self, event: evt.Event) -> None:
        with self.lock:
            self.associations += 1

    def on_store(self, event: evt.Event) -> int:
        ts = str(event.context.transfer_syntax)
        with self.lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] = (
                ts,
                event.request.DataSet.getvalue(),
            )
        return 0x0000

    def on_report(self, event: evt.Event) -> tuple[int, None]:
        self.reports.append((event.event_type, event.event_information))
        self.got_report.set()
        return 0x0000, None


@contextmanager
def pynetdicom_destination(
    syntaxes: dict[str, list[str]] | None = None, ae_title: str = "PYSCP"
) -> Iterator[tuple[int, Recorder]]:
    """A pynetdicom storage (and commitment report) SCP; `syntaxes` limits what it accepts."""
    rec = Recorder()
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = 4
    # The edge sets pynetdicom's process-wide UNRESTRICTED_STORAGE_SERVICE, which makes any
    # in-process acceptor take every storage context; a restricted peer needs it off.
    unrestricted = _config.UNRESTRICTED_STORAGE_SERVICE
    if syntaxes is not None:
        _config.UNRESTRICTED_STORAGE_SERVICE = False
    wanted = syntaxes or {uid: UNCOMPRESSED for uid in STORAGE_SOP_CLASSES}
    for uid, tss in wanted.items():
        ae.add_supported_context(uid, tss)
    ae.add_supported_context(StorageCommitmentPushModel, UNCOMPRESSED, scp_role=True, scu_role=True)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[
            (evt.EVT_CONN_OPEN, tune),
            (evt.EVT_ESTABLISHED, rec.on_established),
            (evt.EVT_C_STORE, rec.on_store),
            (evt.EVT_N_EVENT_REPORT, rec.on_report),
        ],
    )
    try:
        yield port, rec
    finally:
        server.shutdown()
        ae.shutdown()
        _config.UNRESTRICTED_STORAGE_SERVICE = unrestricted


@contextmanager
def connection_recorder() -> Iterator[tuple[int, list[str]]]:
    """A listening socket that records every TCP connection made to it."""
    seen: list[str] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.05)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, addr = sock.accept()
            except OSError:
                continue
            seen.append(addr[0])
            conn.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1], seen
    finally:
        stop.set()
        t.join(2)
        sock.close()


def study_identifier(study_uid: str, level: str = "STUDY") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = study_uid
    return ds


def move(
    edge: EdgeServer, identifier: Dataset, destination: str, calling_ae: str = "MOVESCU"
) -> list[tuple[int, Dataset | None, Dataset]]:
    """C-MOVE with pynetdicom; returns (status, identifier, full status dataset) per response."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(
        "127.0.0.1", edge.ports[0], ae_title="HPACS", evt_handlers=[(evt.EVT_CONN_OPEN, tune)]
    )
    assert assoc.is_established
    try:
        out = []
        for status, ident in assoc.send_c_move(
            identifier, destination, StudyRootQueryRetrieveInformationModelMove
        ):
            out.append((int(status.Status), ident, status))
        return out
    finally:
        assoc.release()
        ae.shutdown()


def get(
    edge: EdgeServer,
    identifier: Dataset,
    sop_classes: Sequence[str],
    syntaxes: Sequence[str] = tuple(UNCOMPRESSED),
    calling_ae: str = "GETSCU",
) -> tuple[list[tuple[int, Dataset | None, Dataset]], Recorder]:
    """C-GET with pynetdicom taking the storage SCP role for `sop_classes`."""
    rec = Recorder()
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for uid in sop_classes:
        ae.add_requested_context(uid, list(syntaxes))
    roles = [build_role(uid, scp_role=True) for uid in sop_classes]
    assoc = ae.associate(
        "127.0.0.1",
        edge.ports[0],
        ae_title="HPACS",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, rec.on_store), (evt.EVT_CONN_OPEN, tune)],
    )
    assert assoc.is_established
    try:
        out = []
        for status, ident in assoc.send_c_get(
            identifier, StudyRootQueryRetrieveInformationModelGet
        ):
            out.append((int(status.Status), ident, status))
        return out, rec
    finally:
        assoc.release()
        ae.shutdown()


def quick_study(folder: Path, n: int, spec: StudySpec | None = None) -> list[Path]:
    """n instances of one series cloned from one synthetic image: fast for large counts."""
    spec = spec or StudySpec(rows=64, columns=64)
    folder.mkdir(parents=True, exist_ok=True)
    ds = make_instance(spec, spec.study_uid or synthetic.uid(), synthetic.uid(), 1, 1)
    paths = []
    for i in range(1, n + 1):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = synthetic.uid()
        ds.InstanceNumber = i
        p = folder / f"{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def uid_list(value: object) -> list[str]:
    """A UI element's values as a list, single-valued or not."""
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value]  # type: ignore[attr-defined]
