"""kill -9 in the middle of a correction: no instance lost or half-changed.

`hpacs-edge studies modify` runs as a real process and dies by SIGKILL at a chosen point of its
own code: a precise crash point cannot be produced by a peer, so the process is started
through a small wrapper that replaces one of our correction helpers with a counting
`SIGKILL` to itself on its Nth call:

- `fsync_file` (a rewritten temp file is complete, not yet linked): a temp file is left;
- `transition` (inside the switch transaction of the Nth instance: it never commits): that
  instance keeps its old row and bytes, its new file is a stray;
- `_retire` (the Nth switch committed, its old file not yet unlinked): the old file is a stray.

Afterwards every instance has either its old or its new bytes, with a row that matches them;
the real `hpacs-edge serve` start-up reconcile removes the strays and reports the unfinished
correction; the same `modify` run again completes it, and the sync agent uploads the rest.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest

from shared.checksum import crc32c_file
from shared.config import parse_config
from shared.index import Database, connect
from shared.keys import is_revision_key
from shared.store.base import open_store
from shared.synthetic import StudySpec, write_study
from sync.agent import Agent
from tests.support.edge import cli, edge_config, running_edge, write_toml
from tests.support.edgeproc import edge_process
from tests.support.retrieve import load
from tests.support.sync import sync_config

ROOT = Path(__file__).resolve().parents[1]
CRASH = (
    "import os, signal, sys\n"
    "import edge.corrections as c\n"
    "name, n = sys.argv.pop(1), int(sys.argv.pop(1))\n"
    "real, calls = getattr(c, name), [0]\n"
    "def crash(*a, **k):\n"
    "    calls[0] += 1\n"
    "    if calls[0] == n:\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "    return real(*a, **k)\n"
    "setattr(c, name, crash)\n"
    "from edge.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
OLD, NEW = "BEFORE^CRASH", "AFTER^CRASH"


def _instance_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*.dcm") if p.relative_to(cache).parts[0] != "tmp"]


def _consistent(data: dict[str, Any]) -> dict[str, str]:
    """Every row's file exists and holds the row's bytes; SOP UID -> the name it holds."""
    cache = Path(data["edge"]["data_dir"]) / "cache"
    db = connect(Path(data["edge"]["data_dir"]) / "index.sqlite")
    rows = db.execute("SELECT sop_instance_uid, path, size, crc32c FROM instances").fetchall()
    db.close()
    names = {}
    for r in rows:
        f = cache / r["path"]
        assert (f.stat().st_size, crc32c_file(f)) == (r["size"], r["crc32c"])
        ds = pydicom.dcmread(f)
        assert ds.SOPInstanceUID == r["sop_instance_uid"]
        names[r["sop_instance_uid"]] = str(ds.PatientName)
    return names


def _drain(data: dict[str, Any]) -> None:
    cfg = parse_config(data)
    db = Database(cfg.edge.index_path)
    agent = Agent(cfg, db)
    try:
        agent.drain()
    finally:
        agent.close()
        db.close()


@pytest.mark.parametrize(
    ("crash_at", "nth", "strays"),
    [("fsync_file", 3, 0), ("transition", 3, 1), ("_retire", 3, 1)],
)
def test_kill_9_during_a_correction_leaves_old_or_new_bytes_and_a_rerun_completes_it(
    tmp_path: Path, crash_at: str, nth: int, strays: int
) -> None:
    data = edge_config(tmp_path)
    data["sync"] = sync_config(tmp_path, f"file://{tmp_path / 'bucket'}", site="crash")["sync"]
    config = write_toml(tmp_path / "hpacs.toml", data)
    files = write_study(StudySpec(patient_name=OLD, instances_per_series=5), tmp_path / "in")
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    with running_edge(data) as edge:
        load(edge, files)
    _drain(data)  # synced: the originals are in the bucket
    cache = Path(data["edge"]["data_dir"]) / "cache"

    proc = subprocess.run(
        [sys.executable, "-c", CRASH, crash_at, str(nth), "--config", str(config),
         "studies", "modify", study, "--set", f"PatientName={NEW}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    names = _consistent(data)  # each instance: old or new bytes, its row matching them
    done = 2 if crash_at != "_retire" else 3  # the Nth switch committed before _retire
    assert sorted(names.values()) == sorted([NEW] * done + [OLD] * (5 - done))
    assert len(_instance_files(cache)) == 5 + strays
    assert len(list((cache / "tmp").iterdir())) == 1  # the rewritten temp file

    log = tmp_path / "edge.log"
    with edge_process(config, log):  # start-up reconcile
        pass
    text = log.read_text()
    assert f"replace_leftovers={strays}" in text
    assert f"unfinished correction study_uid={study} attributes=PatientName" in text
    assert len(_instance_files(cache)) == 5 and not list((cache / "tmp").iterdir())
    assert _consistent(data) == names

    again = cli(config, "studies", "modify", study, "--set", f"PatientName={NEW}", timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"rewritten={5 - done} unchanged={done}" in again.stdout
    assert set(_consistent(data).values()) == {NEW}
    assert len(_instance_files(cache)) == 5

    _drain(data)  # every new version uploaded beside its original
    db = connect(Path(data["edge"]["data_dir"]) / "index.sqlite")
    rows = db.execute("SELECT state, object_key FROM instances").fetchall()
    db.close()
    assert {r["state"] for r in rows} == {"synced"}
    assert all(is_revision_key(r["object_key"]) for r in rows)
    keys = [i.key for i in open_store(f"file://{tmp_path / 'bucket'}").list("instances/")]
    assert len(keys) == 10  # five originals, five corrected versions
    with edge_process(config, log):  # the marker is gone with the completed correction
        pass
    assert log.read_text().count("unfinished correction") == 1
