"""Sync agent test helpers: an edge index and cache filled through the real ingest path, an agent
on file:// or the GCS emulator, and index queries the tests assert on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge.cache import Cache
from edge.ingest import Ingestor
from shared.config import Config, parse_config
from shared.index import Database
from shared.rows import Origin
from shared.synthetic import StudySpec, write_study
from sync.agent import Agent
from tests.support.edge import write_toml

ROOT = Path(__file__).resolve().parents[2]


def sync_config(tmp_path: Path, store_url: str, **sync: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "store_url": store_url,
        "site": "test",
        "poll_interval_s": 0.05,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.5,
        "min_cache_age_s": 0,
        "upload_timeout_s": 5,
        "evict_interval_s": 3600,
        "cache_high_watermark": "100%",
        "cache_low_watermark": "100%",
    }
    s.update(sync)
    return {
        "edge": {"data_dir": str(tmp_path / "edge"), "min_free_bytes": 0, "tls": {"port": 0}},
        "sync": s,
    }


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    """The same config as a TOML file, for the CLI in a subprocess."""
    return write_toml(tmp_path / "hpacs.toml", data)


class Site:
    """An edge's index and cache (no DIMSE server: ingest goes through the same Ingestor)."""

    def __init__(self, tmp_path: Path, data: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.data = data
        self.cfg: Config = parse_config(data)
        self.db = Database(self.cfg.edge.index_path)
        self.cache = Cache(self.cfg.edge.cache_dir)
        self.ingestor = Ingestor(self.db, self.cache)
        self._n = 0

    def add_study(self, instances: int = 3, rows: int = 64, columns: int = 64, **spec: Any) -> str:
        """Ingest a synthetic study; returns its Study Instance UID."""
        self._n += 1
        folder = self.tmp_path / "incoming" / f"s{self._n}"
        s = StudySpec(instances_per_series=instances, rows=rows, columns=columns, **spec)
        paths = write_study(s, folder)
        uid = ""
        for p in paths:
            res = self.ingestor.ingest_path(p, Origin("import"))
            uid = res.header.study_uid
        return uid

    def agent(self, **kw: Any) -> Agent:
        return Agent(self.cfg, self.db, **kw)

    def states(self, study_uid: str | None = None) -> dict[str, int]:
        sql = "SELECT i.state, count(*) FROM instances i JOIN studies s ON s.id = i.study_id"
        args: tuple[Any, ...] = ()
        if study_uid:
            sql += " WHERE s.study_uid = ?"
            args = (study_uid,)
        return dict(self.db.reader().execute(sql + " GROUP BY i.state", args).fetchall())

    def rows(self, where: str = "1", args: tuple[Any, ...] = ()) -> list[Any]:
        return self.db.reader().execute(f"SELECT * FROM instances WHERE {where}", args).fetchall()

    def study_id(self, study_uid: str) -> int:
        return int(
            self.db.reader()
            .execute("SELECT id FROM studies WHERE study_uid = ?", (study_uid,))
            .fetchone()[0]
        )

    def age_study(self, study_uid: str, seconds: float) -> None:
        """Pretend a study was last touched `seconds` ago (eviction looks at the clock)."""
        with self.db.write() as conn:
            conn.execute(
                "UPDATE studies SET last_access = last_access - ?, updated_at = updated_at - ? "
                "WHERE study_uid = ?",
                (seconds, seconds, study_uid),
            )

    def close(self) -> None:
        self.db.close()


@contextmanager
def site(tmp_path: Path, store_url: str, **sync: Any) -> Iterator[Site]:
    s = Site(tmp_path, sync_config(tmp_path, store_url, **sync))
    try:
        yield s
    finally:
        s.close()


def start_agent_process(config: Path, *extra_env: tuple[str, str]) -> subprocess.Popen[str]:
    """`hpacs-sync --config F run` as a child process (the caller stops or kills it)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(dict(extra_env))
    return subprocess.Popen(
        [sys.executable, "-m", "sync.cli", "--config", str(config), "run"],
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
