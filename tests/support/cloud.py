"""The cloud API on a free port in a background thread, and a bucket seeded like a sync agent would.

`seed_site` writes instance objects and `catalog/<site>/` journal objects exactly as the sync
agent's contract says (shared.keys, shared.catalog), so the API is tested against the format,
not against a particular agent.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from pydicom.dataset import Dataset

from cloud_api.app import SERVICES, create_app
from cloud_api.auth import TokenStore
from cloud_api.runner import make_runner
from shared.catalog import CatalogRow, encode_batch
from shared.checksum import crc32c_bytes
from shared.config import CloudConfig
from shared.dicom import read_header
from shared.keys import catalog_key, catalog_prefix, catalog_sequence, instance_key
from shared.store.base import ObjectStore
from shared.synthetic import StudySpec, iter_study
from tests.support.net import free_port


def dataset_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def seed_site(store: ObjectStore, site: str, spec: StudySpec, batch: int = 500) -> dict[str, bytes]:
    """Upload a synthetic study and journal it; returns {SOP Instance UID: Part-10 bytes}."""
    out: dict[str, bytes] = {}
    rows: list[CatalogRow] = []
    for ds in iter_study(spec):
        data = dataset_bytes(ds)
        h = read_header(data)
        key = instance_key(h.study_uid, h.series_uid, h.sop_instance_uid)
        store.put(key, data, content_type="application/dicom")
        rows.append(CatalogRow(h, len(data), crc32c_bytes(data), key, site, time.time()))
        out[h.sop_instance_uid] = data
    append_rows(store, site, rows, batch)
    return out


def append_rows(store: ObjectStore, site: str, rows: list[CatalogRow], batch: int = 500) -> None:
    last = ""
    for info in store.list(catalog_prefix(site)):
        last = info.key
    seq = catalog_sequence(last) if last else 0
    for i in range(0, len(rows), batch):
        seq += 1
        store.put(catalog_key(site, seq), encode_batch(rows[i : i + batch]))


@dataclass
class CloudServer:
    cfg: CloudConfig
    store: ObjectStore
    app: web.Application | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicomweb"

    def start(self) -> None:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self.app = create_app(self.cfg, self.store)
                self._runner = make_runner(self.app)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, "127.0.0.1", self.cfg.port)
                loop.run_until_complete(site.start())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="cloud-api", daemon=True)
        self._thread.start()
        ready.wait(60)
        if errors:
            raise errors[0]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def poll(self) -> None:
        """Apply new catalog objects now instead of waiting for the poll interval."""
        assert self.app is not None
        self.app[SERVICES].poller.poll()

    @property
    def services(self):  # type: ignore[no-untyped-def]
        assert self.app is not None
        return self.app[SERVICES]


def cloud_config(tmp_path: Path, **kw: object) -> CloudConfig:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "store_url": f"file://{tmp_path / 'bucket'}",
        "data_dir": str(tmp_path / "cloud"),
        "tokens_file": str(tmp_path / "cloud" / "tokens.json"),
        "catalog_poll_interval_s": 3600.0,  # tests poll explicitly
    }
    base.update(kw)
    return CloudConfig(**base)  # type: ignore[arg-type]


@contextmanager
def running_cloud(cfg: CloudConfig, store: ObjectStore) -> Iterator[CloudServer]:
    server = CloudServer(cfg, store)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_token(cfg: CloudConfig, name: str, role: str, sites: list[str]) -> str:
    return TokenStore(cfg.tokens_file).create(name, role, sites)
