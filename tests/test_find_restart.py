"""The index survives `hpacs-edge serve` answering C-FIND associations and then stopping.

Found by bench/cfind.py: after SIGTERM the index file began with b"xQLite": the edge's
event-driven reactor (edge/reactor.py, since replaced by edge/dimse/) closed its wake-up
pipe when an association's DUL thread ended, but a later put on that association's queue still
wrote b"x" to the old descriptor number, which by then belonged to an SQLite file opened for a
newer association.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE

from edge.find import STUDY_ROOT_FIND
from shared.index import Database
from tests.support.dcmtk import run
from tests.support.find import populate
from tests.support.net import free_port, port_open, wait_for


def _serve(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    data = tmp_path / "data"
    db = Database(data / "index.sqlite")
    populate(db)
    db.close()
    (tmp_path / "hpacs.toml").write_text(
        f'[edge]\nae_title = "HPACS"\nhost = "127.0.0.1"\nport = {port}\n'
        f'data_dir = "{data}"\nmin_free_bytes = 0\nhttp_port = 0\nlog_level = "WARNING"\n'
        "[edge.tls]\nport = 0\n"
        '[[nodes]]\nae_title = "FINDSCU"\nhost = "127.0.0.1"\nport = 104\n'
        'permissions = ["echo", "find"]\n'
    )
    exe = Path(sys.executable).parent / "hpacs-edge"
    proc = subprocess.Popen(
        [str(exe), "--config", str(tmp_path / "hpacs.toml"), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, TCP_NODELAY="1"),
    )
    wait_for(lambda: port_open(port) or proc.poll() is not None, 30, "hpacs-edge to listen")
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    return proc, port, data / "index.sqlite"


def test_index_intact_after_find_associations_and_stop(tmp_path: Path) -> None:
    proc, port, index = _serve(tmp_path)
    try:
        ae = AE(ae_title="FINDSCU")
        ae.add_requested_context(STUDY_ROOT_FIND)
        assoc = ae.associate("127.0.0.1", port, ae_title="HPACS")
        assert assoc.is_established
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientID = ""
        for _ in range(20):
            statuses = [s.Status for s, _ in assoc.send_c_find(ds, STUDY_ROOT_FIND)]
            assert statuses == [0xFF00] * 5 + [0]
        assoc.release()
        ae.shutdown()
        for _ in range(4):
            r = run(
                "findscu",
                "-S",
                "--repeat",
                "3",
                "-aet",
                "FINDSCU",
                "-aec",
                "HPACS",
                "127.0.0.1",
                port,
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                "PatientID=X",
            )
            assert r.returncode == 0, r.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    with open(index, "rb") as fh:
        assert fh.read(16) == b"SQLite format 3\x00"
