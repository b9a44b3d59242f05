"""Invariant 1: C-STORE answers 0x0000 only after the file is fsynced and its row committed.

`hpacs-edge serve` runs as a real process; pynetdicom streams instances into it while another
thread kills it with SIGKILL mid-stream. After a restart every acknowledged instance must be
in the index with a file whose crc32c matches its row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import _config

from shared.checksum import crc32c_file
from shared.config import load_config
from shared.index import connect
from shared.synthetic import StudySpec, write_study
from tests.support.edge import association, edge_config, write_toml
from tests.support.net import port_open, wait_for


@contextmanager
def edge_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`hpacs-edge serve` in its own process; killed at exit if still running."""
    exe = Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "hpacs-edge"
    if not exe.exists():
        import sys

        exe = Path(sys.executable).parent / "hpacs-edge"
    cfg = load_config(config)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(exe), "--config", str(config), "serve"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for(
            lambda: port_open(cfg.edge.port) or proc.poll() is not None,
            timeout_s=30,
            what="hpacs-edge to listen",
        )
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _send_until_killed(port: int, files: list[Path], proc: Any, kill_after: int) -> list[str]:
    """Send files one by one; kill the server after `kill_after` acks. Returns acked UIDs."""
    acked: list[str] = []
    enough = threading.Event()

    def killer() -> None:
        enough.wait(timeout=60)
        os.kill(proc.pid, signal.SIGKILL)

    t = threading.Thread(target=killer)
    t.start()
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with association(
            port, contexts=[("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])]
        ) as a:
            assert a.is_established
            for f in files:
                try:
                    rsp = a.send_c_store(f)
                except Exception:
                    break
                if not a.is_established or rsp is None or "Status" not in rsp:
                    break
                if int(rsp.Status) == 0:
                    acked.append(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                if len(acked) >= kill_after:
                    enough.set()  # keep sending: the kill lands mid-stream
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        enough.set()
        t.join()
    return acked


def test_invariant_1_acknowledged_instances_survive_kill_9(tmp_path: Path) -> None:
    data: dict[str, Any] = edge_config(tmp_path)
    config = write_toml(tmp_path / "hpacs.toml", data)
    log = tmp_path / "edge.log"
    port = data["edge"]["port"]
    files = write_study(StudySpec(instances_per_series=80), tmp_path / "in")
    all_acked: list[str] = []
    start = 0
    for kill_after in (3, 25):
        with edge_process(config, log) as proc:
            acked = _send_until_killed(port, files[start:], proc, kill_after)
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
        assert len(acked) >= kill_after, log.read_text()[-3000:]
        all_acked += acked
        start += len(acked) + 10  # files that may or may not have landed are skipped

    # restart: reconciliation runs, then every acknowledged instance must be intact
    with edge_process(config, log) as proc:
        db = connect(Path(data["edge"]["data_dir"]) / "index.sqlite")
        rows = {
            r["sop_instance_uid"]: r
            for r in db.execute("SELECT sop_instance_uid, path, size, crc32c FROM instances")
        }
        db.close()
        cache = Path(data["edge"]["data_dir"]) / "cache"
        missing = [u for u in all_acked if u not in rows]
        assert not missing, f"acknowledged but lost: {missing[:5]}"
        for u in all_acked:
            f = cache / rows[u]["path"]
            assert f.stat().st_size == rows[u]["size"]
            assert crc32c_file(f) == rows[u]["crc32c"], u
            assert pydicom.dcmread(f).SOPInstanceUID == u
        assert list((cache / "tmp").iterdir()) == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert "edge node stopped" in log.read_text()
