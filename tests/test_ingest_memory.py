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
    from pynetdicom import _config

    from edge.server import EdgeServer
    from shared.config import parse_config
    from tests.support.edge import edge_config

    assert _config.STORE_RECV_CHUNKED_DATASET is True
    cfg = parse_config(edge_config(tmp_path))
    db = Database(cfg.edge.index_path)
    try:
        server = EdgeServer(cfg, db)
        import tempfile

        # pynetdicom's NamedTemporaryFile lands in the cache filesystem: link, not copy
        assert Path(tempfile.gettempdir()) == server.cache.tmp
    finally:
        db.close()
