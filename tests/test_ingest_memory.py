"""The ingest path streams: header parsing stops before the pixels and the crc reads in chunks.

A large object must never be held in memory (the 1 GB RSS check lives in bench/; here a
48 MB object through the same code paths, measured with tracemalloc).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from edge.cache import Cache
from edge.ingest import Ingestor
from shared.dicom import read_header
from shared.index import Database
from shared.rows import Origin
from shared.synthetic import StudySpec, iter_study

SIZE_MB = 48


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = next(iter_study(StudySpec(instances_per_series=1, rows=512, columns=512)))
    frames = SIZE_MB * 1024 * 1024 // (512 * 512 * 2)
    ds.NumberOfFrames = frames
    ds.PixelData = np.zeros(512 * 512 * frames, dtype=np.uint16).tobytes()
    path = tmp_path_factory.mktemp("big") / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    del ds
    return path


def _peak_bytes(fn: object) -> int:
    tracemalloc.start()
    try:
        fn()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_read_header_stops_before_pixels(big_file: Path) -> None:
    assert big_file.stat().st_size > SIZE_MB * 1024 * 1024
    peak = _peak_bytes(lambda: read_header(big_file))
    assert peak < 4 * 1024 * 1024, peak


def test_ingest_of_a_large_object_streams(big_file: Path, tmp_path: Path) -> None:
    db = Database(tmp_path / "index.sqlite")
    try:
        ingestor = Ingestor(db, Cache(tmp_path / "cache"))
        result = None

        def ingest() -> None:
            nonlocal result
            result = ingestor.ingest_path(big_file, Origin("import"))

        peak = _peak_bytes(ingest)
        assert result is not None and result.size == big_file.stat().st_size
        assert peak < 8 * 1024 * 1024, f"ingest held {peak / 2**20:.1f} MiB"
    finally:
        db.close()


def test_c_store_data_are_spooled_to_the_cache_not_memory(tmp_path: Path) -> None:
    """A C-STORE's dataset goes from the socket into a file in the cache's temp directory (the
    same filesystem, so ingest links it into place) fragment by fragment: a 48 MB object
    arrives with a peak of a few hundred KB of Python memory (replaces the check of
    pynetdicom's chunked-receive setting: edge/dimse/ owns the receive now)."""
    import socket
    import threading

    from edge.dimse import command as cmd
    from edge.dimse import pdu
    from edge.dimse.engine import Association
    from edge.dimse.link import Link
    from edge.dimse.negotiation import Context
    from edge.dimse.spool import SpoolFile
    from edge.server import EdgeServer
    from shared.config import parse_config
    from tests.support.edge import edge_config

    cfg = parse_config(edge_config(tmp_path))
    db = Database(cfg.edge.index_path)
    try:
        server = EdgeServer(cfg, db)
        assert server.store.spool_dir == server.cache.tmp
    finally:
        db.close()
    ours, theirs = socket.socketpair()
    ct = "1.2.840.10008.5.1.4.1.1.2"
    cx = Context(1, ct, "1.2.840.10008.1.2.1", False, True)
    assoc = Association(
        Link(ours, "peer"), {1: cx}, peer_max_pdu=0, our_max_pdu=262144,
        idle_timeout_s=10, dimse_timeout_s=10,
    )  # fmt: skip
    chunk = bytes(262138)  # one PDV per 256 KiB PDU, reused: the sender allocates ~nothing
    n = SIZE_MB * 4

    def peer() -> None:
        theirs.sendall(pdu.message(1, cmd.store_rq(1, ct, "1.2.3.4"), None, 262144))
        for i in range(n):
            control = pdu.LAST if i == n - 1 else 0
            head = pdu.PDV_HEAD.pack(4, 0, len(chunk) + 6, len(chunk) + 2, 1, control)
            theirs.sendall(head)
            theirs.sendall(chunk)

    sender = threading.Thread(target=peer)
    spooled: list[SpoolFile] = []

    def sink(cx_: Context, command: cmd.Command) -> SpoolFile:
        spooled.append(
            SpoolFile(
                server.cache.tmp, command.sop_class, command.sop_instance, cx_.transfer_syntax
            )
        )
        return spooled[0]

    tracemalloc.start()
    try:
        sender.start()
        msg = assoc.receive(10, sink)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        sender.join()
        ours.close()
        theirs.close()
    assert msg.sink is spooled[0] and spooled[0].path.parent == server.cache.tmp
    assert spooled[0].path.stat().st_size == 132 + len(encode_meta(ct)) + n * len(chunk)
    assert peak < 2 * 1024 * 1024, f"receiving held {peak / 2**20:.1f} MiB"


def encode_meta(sop_class: str) -> bytes:
    from edge.dimse.spool import encode_file_meta

    return encode_file_meta(sop_class, "1.2.3.4", "1.2.840.10008.1.2.1")
