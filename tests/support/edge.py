"""An in-process edge node on a free port, started and stopped inside a fixture."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge.reconcile import reconcile
from edge.server import EdgeServer
from shared.config import Config, parse_config
from shared.index import Database
from shared.registry import apply_config_nodes
from tests.support.net import free_port

# CT, MR, Secondary Capture, Enhanced CT/MR, Digital X-Ray, Ultrasound
COMMON_STORAGE = [
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.4.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.6.1",
]
DCMTK_AETS = ["ECHOSCU", "STORESCU", "FINDSCU", "MOVESCU", "GETSCU"]


def edge_config(tmp_path: Path, **edge: Any) -> dict[str, Any]:
    """A config dict: free port, data under tmp_path, DCMTK's AE titles registered."""
    nodes = edge.pop("nodes", None)
    e = {
        "ae_title": "HPACS",
        "host": "127.0.0.1",
        "port": free_port(),
        "data_dir": str(tmp_path / "edge"),
        "min_free_bytes": 0,
        "tls": {"port": 0},
        "http_port": 0,  # tests that need the edge's HTTP side ask for a free port
        # one process: tests that patch a function of `hpacs-edge serve` or read its log lines
        # need the DIMSE work in that process (the default "auto" is tested where it matters:
        # tests/test_acceptors.py, the stop-time test in tests/test_dimse_attacks.py)
        "acceptors": 1,
    }
    e.update(edge)
    if nodes is None:
        nodes = [
            {
                "ae_title": aet,
                "host": "127.0.0.1",
                "port": 104,
                "permissions": ["echo", "store", "find", "move", "get", "commit"],
            }
            for aet in DCMTK_AETS
        ]
    # a bucket of the test's own (the default, file://var/bucket, is relative to the CWD)
    return {"edge": e, "nodes": nodes, "sync": {"store_url": f"file://{tmp_path}/bucket"}}


@contextmanager
def running_edge(data: dict[str, Any]) -> Iterator[EdgeServer]:
    from edge.runtime import configure

    configure()
    cfg: Config = parse_config(data)
    db = Database(cfg.edge.index_path)
    with db.write() as conn:
        apply_config_nodes(conn, cfg.nodes)
    server = EdgeServer(cfg, db)
    reconcile(db, server.cache)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        db.close()


@contextmanager
def association(
    port: int,
    calling_ae: str = "STORESCU",
    *,
    called_ae: str = "HPACS",
    contexts: list[tuple[str, list[str]]] | None = None,
    tls_args: tuple[Any, str] | None = None,
) -> Iterator[Any]:
    """A pynetdicom association to the edge, released (or aborted) on exit.

    Yields the Association even when it was rejected, so tests can assert the rejection.
    """
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
    if contexts is None:
        # One syntax per context, so a file sent unparsed always finds its exact syntax.
        # A handful of classes: negotiating ~120 contexts costs pynetdicom ~0.4 s per association.
        ae.add_requested_context(Verification)
        for sop_class in COMMON_STORAGE:
            ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
            ae.add_requested_context(sop_class, "1.2.840.10008.1.2")
    else:
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, syntaxes)
    received: list[Any] = []
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title=called_ae,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_ACSE_RECV, lambda e: received.append(e.primitive))],
    )
    # (result, source, reason) of an A-ASSOCIATE-RJ, for exact assertions
    assoc.rejection = next(
        (
            (p.result, p.result_source, p.diagnostic)
            for p in received
            if getattr(p, "result", None) in (1, 2)
        ),
        None,
    )
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def files_under(root: Path) -> set[Path]:
    """Every regular file below root (to prove nothing landed outside the cache)."""
    return {p for p in root.rglob("*") if p.is_file()}


def part10_with_raw_dataset(
    path: Path,
    dataset_bytes: bytes,
    *,
    sop_class_uid: str = "1.2.840.10008.5.1.4.1.1.7",
    sop_instance_uid: str = "1.2.826.0.1.3680043.8.498.1",
    transfer_syntax: str = "1.2.840.10008.1.2.1",
) -> Path:
    """A Part-10 file whose file meta says what the command will say, followed by raw bytes.

    pynetdicom's send_c_store(path) takes the command UIDs from the file meta and sends the
    bytes after it unparsed: the way to put crafted datasets on the wire.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fh, meta, enforce_standard=True)  # type: ignore[arg-type]
        fh.write(dataset_bytes)
    return path


def encoded_dataset(ds: Any, implicit_vr: bool = False) -> bytes:
    """The dataset bytes (no preamble, no file meta) in a little-endian syntax."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit_vr
    write_dataset(fp, ds)
    return fp.getvalue()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """Write a config dict (tables, arrays of tables, scalars) as a TOML file."""
    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        subs = []
        for k, v in d.items():
            tables = isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
            if isinstance(v, dict) or tables:
                subs.append((k, v))
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        for k, v in subs:
            name = f"{prefix}{k}"
            if isinstance(v, dict):
                lines.append(f"\n[{name}]")
                table(f"{name}.", v)
            else:
                for item in v:
                    lines.append(f"\n[[{name}]]")
                    table(f"{name}.", item)

    table("", data)
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(config: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the installed `hpacs-edge` entry point, as an admin would."""
    exe = Path(sys.executable).parent / "hpacs-edge"
    return subprocess.run(
        [str(exe), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
