"""A correction end to end, with real peers (issue 10's acceptance):

storescu stores a study with a wrong patient name; the sync agent uploads and journals it;
`hpacs-edge studies modify` corrects it; the agent re-uploads and re-catalogs it. Then DCMTK
findscu (C-FIND) and the file movescu has sent to storescp (C-MOVE), the cloud API's QIDO and
WADO metadata all show the new name; the original bytes come back through `hpacs-edge studies
versions --fetch`; and a restore (the cloud catalog rebuilt from the bucket, and the edge's
index rebuilt from the catalog, its files recalled from the revision keys) gives the same
answers as before it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pydicom
import requests

from edge.server import EdgeServer
from shared.config import parse_config
from shared.index import Database
from shared.store.base import open_store
from shared.synthetic import StudySpec, write_study
from sync.agent import Agent
from sync.restore import restore_index
from tests.support.cloud import cloud_config, make_token, running_cloud
from tests.support.dcmtk import movescu, run, storescp
from tests.support.edge import cli, edge_config, running_edge, write_toml
from tests.support.net import free_port, port_open, wait_for
from tests.support.retrieve import dataset_bytes
from tests.support.sync import sync_config

WRONG, RIGHT = "WRONG^NAME", "RIGHT^NAME"


def _drain(data: dict[str, Any]) -> None:
    """One pass of the sync agent over the edge's index: upload, verify, journal."""
    cfg = parse_config(data)
    db = Database(cfg.edge.index_path)
    agent = Agent(cfg, db)
    try:
        agent.drain()
        states = db.reader().execute("SELECT DISTINCT state FROM instances").fetchall()
        assert [r[0] for r in states] == ["synced"]
    finally:
        agent.close()
        db.close()


def _find(edge: EdgeServer, out: Path, *keys: str) -> list[pydicom.Dataset]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    args = ["-S", "-aet", "FINDSCU", "-aec", "HPACS", "-X", "-od", out, "127.0.0.1"]
    args += [edge.ports[0], "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    for k in keys:
        args += ["-k", k]
    r = run("findscu", *args)
    assert r.returncode == 0, r.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _move(edge: EdgeServer, dest_port: int, out: Path, study: str) -> dict[str, Path]:
    shutil.rmtree(out, ignore_errors=True)
    scp = storescp(dest_port, out)
    try:
        wait_for(lambda: port_open(dest_port), what="storescp")
        mv = movescu(edge.ports[0], "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
        assert mv.returncode == 0, mv.stderr
    finally:
        scp.terminate()
        scp.wait(10)
    return {pydicom.dcmread(p).SOPInstanceUID: p for p in out.iterdir()}


def _cloud_answers(url: str, token: str, study: str) -> tuple[Any, Any, Any]:
    auth = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}
    qido = requests.get(f"{url}/dicomweb/studies", headers=auth, timeout=30)
    by_name = requests.get(
        f"{url}/dicomweb/studies", params={"PatientName": RIGHT}, headers=auth, timeout=30
    )
    meta = requests.get(f"{url}/dicomweb/studies/{study}/metadata", headers=auth, timeout=30)
    assert qido.status_code == by_name.status_code == meta.status_code == 200, meta.text
    names = sorted(
        m["00100010"]["Value"][0]["Alphabetic"] + "|" + m["00080018"]["Value"][0]
        for m in meta.json()
    )
    return _portless(qido.json()), _portless(by_name.json()), names


def _portless(studies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Answers without their Retrieve URL (it names the replica's own port)."""
    return [{k: v for k, v in s.items() if k != "00081190"} for s in studies]


def test_a_correction_reaches_cfind_cmove_qido_wado_and_survives_a_restore(
    tmp_path: Path,
) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    dest_port = free_port()
    data = edge_config(tmp_path)
    data["nodes"].append(
        {"ae_title": "STORESCP", "host": "127.0.0.1", "port": dest_port, "permissions": ["store"]}
    )
    data["sync"] = sync_config(tmp_path, bucket, site="east")["sync"]
    config = write_toml(tmp_path / "hpacs.toml", data)
    files = write_study(
        StudySpec(patient_name=WRONG, patient_id="P-1", instances_per_series=3), tmp_path / "in"
    )
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    sent = {pydicom.dcmread(f).SOPInstanceUID: dataset_bytes(f) for f in files}

    with running_edge(data) as edge:
        res = run("storescu", "-aec", "HPACS", "127.0.0.1", str(edge.ports[0]), *files)
        assert res.returncode == 0, res.stderr
    _drain(data)

    fix = cli(config, "studies", "modify", study, "--set", f"PatientName={RIGHT}",
              "--reason", "ticket 42: wrong patient name", timeout=120)  # fmt: skip
    assert fix.returncode == 0, fix.stderr
    assert "rewritten=3" in fix.stdout
    _drain(data)  # the new bytes re-synced and re-cataloged

    with running_edge(data) as edge:
        (found,) = _find(edge, tmp_path / "find", "PatientName")
        assert str(found.PatientName) == RIGHT
        assert _find(edge, tmp_path / "find", "PatientName=WRONG*") == []
        moved = _move(edge, dest_port, tmp_path / "moved", study)
    assert set(moved) == set(sent)
    for uid, path in moved.items():
        ds = pydicom.dcmread(path)
        assert (ds.SOPInstanceUID, str(ds.PatientName)) == (uid, RIGHT)
        assert dataset_bytes(path) != sent[uid]  # new bytes, same UID
    before_move = {uid: dataset_bytes(p) for uid, p in moved.items()}

    # the original bytes, for an admin
    listing = cli(config, "studies", "versions", study)
    assert listing.returncode == 0, listing.stderr
    kept = [line.split()[-1] for line in listing.stdout.splitlines() if " kept* " in line]
    assert len(kept) == 3
    out = tmp_path / "original.dcm"
    got = cli(config, "studies", "versions", study, "--fetch", kept[0], "--out", str(out))
    assert got.returncode == 0, got.stderr
    original = pydicom.dcmread(out)
    assert str(original.PatientName) == WRONG
    assert dataset_bytes(out) == sent[original.SOPInstanceUID]

    # the audit record names the attribute, never the values
    audit = (Path(data["edge"]["data_dir"]) / "audit" / "audit.jsonl").read_text()
    assert '"action": "study-modify"' in audit and "PatientName" in audit
    assert RIGHT not in audit and WRONG not in audit and "ticket 42" in audit

    # the cloud: QIDO and WADO metadata
    store = open_store(bucket)
    ccfg = cloud_config(tmp_path)
    token = make_token(ccfg, "root", "admin", [])
    with running_cloud(ccfg, store) as api:
        api.poll()
        qido, by_name, names = _cloud_answers(api.url, token, study)
    assert [s["00100010"]["Value"][0]["Alphabetic"] for s in qido] == [RIGHT]
    assert len(by_name) == 1 and all(n.startswith(RIGHT + "|") for n in names)
    # a restore of the cloud catalog (a new replica rebuilds it from the bucket) answers the same
    rebuilt = cloud_config(tmp_path, data_dir=str(tmp_path / "cloud2"), port=free_port(),
                           tokens_file=ccfg.tokens_file)  # fmt: skip
    with running_cloud(rebuilt, store) as api:
        api.poll()
        assert _cloud_answers(api.url, token, study) == (qido, by_name, names)

    # a restore of the edge: index rebuilt from the catalog, files recalled from the bucket
    shutil.rmtree(data["edge"]["data_dir"])
    db = Database(parse_config(data).edge.index_path)
    restore_index(db, store, "east")
    db.close()
    with running_edge(data) as edge:
        (again,) = _find(edge, tmp_path / "find", "PatientName")
        assert str(again.PatientName) == RIGHT
        moved_again = _move(edge, dest_port, tmp_path / "moved2", study)
    assert {uid: dataset_bytes(p) for uid, p in moved_again.items()} == before_move


def test_patients_merge_from_the_cli(tmp_path: Path) -> None:
    data = edge_config(tmp_path)
    config = write_toml(tmp_path / "hpacs.toml", data)
    a = write_study(StudySpec(patient_id="DUP-7", patient_name="DOE^J"), tmp_path / "a")
    b = write_study(StudySpec(patient_id="MRN-1", patient_name="DOE^JOHN"), tmp_path / "b")
    with running_edge(data) as edge:
        res = run("storescu", "-aec", "HPACS", "127.0.0.1", str(edge.ports[0]), *a, *b)
        assert res.returncode == 0, res.stderr
    merged = cli(config, "patients", "merge", "DUP-7", "MRN-1", "--reason", "duplicate MRN")
    assert merged.returncode == 0, merged.stderr
    with running_edge(data) as edge:
        found = _find(edge, tmp_path / "find", "PatientID=MRN-1", "PatientName")
        assert len(found) == 2 and {str(d.PatientName) for d in found} == {"DOE^JOHN"}
        assert _find(edge, tmp_path / "find", "PatientID=DUP-7") == []
    refused = cli(config, "patients", "merge", "DUP-7", "MRN-1")
    assert refused.returncode == 1 and "no study has that PatientID" in refused.stderr
    bad = cli(config, "studies", "modify", "1.2.3", "--set", "Modality=MR")
    assert bad.returncode == 1 and "Modality cannot be corrected" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
