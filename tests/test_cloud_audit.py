"""The audit trail cannot be rewritten unseen: `hpacs-cloud audit verify` (local log, key and
checkpoints), `--bucket` (also every shipped copy) and `/api/audit/verify` each answer FAIL,
with the reason, to an edit re-chained without the key, a rewrite by someone holding the key, a
deleted, a reordered and a cut-off tail of records; the key file is kept apart and guarded."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from cloud_api.audit import AuditLog, audit_key, verify_dir
from cloud_api.cli import main
from shared.audit import AuditKey, canonical, load_key, log_files
from shared.audit_verify import Report
from shared.config import CloudConfig, ConfigError
from shared.errors import ObjectExists
from shared.store.base import ObjectStore, open_store
from tests.support.cloud import cloud_config, make_token, running_cloud
from tests.support.gcs import BUCKET, Emulator, gcs_emulator, gcs_store

__all__ = ["gcs_emulator"]

N = 60


def _config(tmp_path: Path, **extra: object) -> Path:
    cfg = tmp_path / "hpacs.toml"
    lines = [
        "[cloud]",
        f'data_dir = "{tmp_path / "cloud"}"',
        f'store_url = "file://{tmp_path / "bucket"}"',
        f'tokens_file = "{tmp_path / "tokens.json"}"',
        *(f"{k} = {json.dumps(v)}" for k, v in extra.items()),
    ]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _cloud_cfg(tmp_path: Path) -> CloudConfig:
    return CloudConfig(data_dir=str(tmp_path / "cloud"))


def _log(tmp_path: Path, n: int = N, **kw: object) -> AuditLog:
    key = audit_key(_cloud_cfg(tmp_path), create=True)
    log = AuditLog(tmp_path / "cloud", key, **kw)  # type: ignore[arg-type]
    for i in range(n):
        log.record(
            action="qido",
            outcome="ok",
            token="t",
            role="reader",
            client="10.0.0.1",
            study_uid=f"1.2.{i}",
            status=200,
        )
    return log


def _store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path / 'bucket'}")


def _shipped_log(tmp_path: Path, n: int = N) -> AuditLog:
    """A log whose records were shipped in three segments (three checkpoints)."""
    store = _store(tmp_path)
    log = _log(tmp_path, n // 3)
    for _ in range(2):
        log.ship(store)
        for i in range(n // 3):
            log.record(action="wado", outcome="ok", token="t", study_uid=f"1.3.{i}")
    log.ship(store)
    log.close()
    return log


def _rewrite(path: Path, change: Callable[[list[dict]], list[dict]]) -> None:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in change(recs)))


def _rechain(recs: list[dict], start: int, seal: Callable[[dict], str]) -> list[dict]:
    """What an attacker does after an edit: recompute every link from record `start` on."""
    prev = recs[start - 1]["prev"]
    for r in recs[start - 1 :]:
        r["prev"] = prev
        r["mac"] = seal(r)
        prev = r["mac"]
    return recs


def _verdicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], catalog: str = ""
) -> dict[str, str]:
    """What the CLI (with and without --bucket) and the API (on the `catalog` backend) say
    about tmp_path's replica."""
    cfg = str(_config(tmp_path))
    out: dict[str, str] = {}
    for name, extra in (("cli", []), ("bucket", ["--bucket"])):
        code = main(["--config", cfg, "audit", "verify", *extra])
        text = capsys.readouterr().out
        assert (code == 0) == ("OK:" in text), text
        out[name] = text
    api_cfg = cloud_config(tmp_path, catalog=catalog)
    admin = make_token(api_cfg, "auditor", "admin", [])
    with running_cloud(api_cfg, _store(tmp_path)) as server:
        r = requests.get(
            server.url + "/api/audit/verify",
            headers={"Authorization": f"Bearer {admin}"},
            timeout=30,
        )
        # the API's own request is sealed after the attacked records; it changes nothing above
        out["api"] = r.json()["summary"] + "\n" + json.dumps(r.json()["problems"])
    return out


def test_intact_log_verifies_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], catalog_url: str
) -> None:
    _shipped_log(tmp_path)
    v = _verdicts(tmp_path, capsys, catalog_url)
    assert v["cli"].startswith("OK:") and f"{N} records" in v["cli"]
    assert "3 checkpoints" in v["cli"]
    assert v["bucket"].startswith("OK:") and f"{N} shipped records read" in v["bucket"]
    assert v["api"].startswith("OK:")


def test_edit_rechained_without_the_key_fails_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], catalog_url: str
) -> None:
    """Record 5 edited, then every link recomputed as the old unkeyed SHA-256 chain allowed."""
    log = _shipped_log(tmp_path)

    def attack(recs: list[dict]) -> list[dict]:
        recs[4]["outcome"] = "denied"
        return _rechain(recs, 5, lambda r: hashlib.sha256(canonical(r)).hexdigest())

    _rewrite(log.path, attack)
    for where, text in _verdicts(tmp_path, capsys, catalog_url).items():
        assert text.startswith("FAIL:"), where
        assert "seq 5: record does not match its MAC" in text, (where, text)


def test_rewrite_by_a_key_holder_is_caught_by_the_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], catalog_url: str
) -> None:
    """With the key the local chain can be made consistent again; the shipped checkpoints
    still hold the original MACs, and `--bucket` names the first changed record."""
    log = _shipped_log(tmp_path)
    key = audit_key(_cloud_cfg(tmp_path), create=False)

    def attack(recs: list[dict]) -> list[dict]:
        recs[4]["token"] = "someone-else"
        return _rechain(recs, 5, key.mac)

    _rewrite(log.path, attack)
    v = _verdicts(tmp_path, capsys, catalog_url)
    for text in v.values():
        assert text.startswith("FAIL:") and "differs from checkpoint" in text
        assert "record does not match its MAC" not in text  # the chain itself is consistent
    assert "audit.jsonl:5 seq 5: differs from the copy shipped in audit/cloud_api/" in v["bucket"]
    assert f"and {N - 5} later record(s)" in v["bucket"]


def test_cut_tail_is_reported_as_truncation_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], catalog_url: str
) -> None:
    log = _shipped_log(tmp_path)
    _rewrite(log.path, lambda recs: recs[:-25])
    for where, text in _verdicts(tmp_path, capsys, catalog_url).items():
        assert text.startswith("FAIL:"), where
        assert f"the local log: ends at seq {N - 25}, but checkpoint" in text, (where, text)
        assert f"witnessed seq {N}: 25 record(s) cut (truncated)" in text, (where, text)


def test_deleted_and_reordered_records_are_named(tmp_path: Path) -> None:
    log = _log(tmp_path, 6)
    log.close()
    key = audit_key(_cloud_cfg(tmp_path), create=False)
    lines = log.path.read_text().splitlines(keepends=True)

    def check(text: str) -> Report:
        log.path.write_text(text)
        return verify_dir(log.dir, key, _store(tmp_path))

    deleted = check("".join(lines[:1] + lines[2:]))
    assert [(p.kind, p.seq) for p in deleted.problems] == [("deleted", 3), ("deleted", 3)]
    assert "sequence 3 where 2 was expected (deleted)" in deleted.summary()
    swapped = check("".join([lines[0], lines[3], lines[2], lines[1], *lines[4:]]))
    assert not swapped.ok and swapped.problems[0].seq == 4
    assert {p.kind for p in swapped.problems} == {"deleted", "reordered"}


def test_rotation_carries_the_chain_across_files(tmp_path: Path) -> None:
    store = _store(tmp_path)
    log = _log(tmp_path, 30, max_bytes=2000)
    log.ship(store)
    log.record(action="stow", outcome="ok", token="t")
    log.close()
    files = log_files(log.dir)
    assert len(files) > 3 and files[-1].name == "audit.jsonl"
    first_of = [json.loads(f.read_text().splitlines()[0]) for f in files[1:]]
    last_of = [json.loads(f.read_text().splitlines()[-1]) for f in files[:-1]]
    assert [a["prev"] for a in first_of] == [b["mac"] for b in last_of]  # chained across files
    key = audit_key(_cloud_cfg(tmp_path), create=False)
    report = verify_dir(log.dir, key, store, segments=True)
    assert report.ok and report.records == 31 and report.shipped == 30, report.summary()
    again = AuditLog(tmp_path / "cloud", key, max_bytes=2000)  # resumes after a restart
    assert again.record(action="qido", outcome="ok")["seq"] == 32
    assert again.ship(store) == 2  # exactly the records not shipped yet, across the rotation
    again.close()
    files[1].unlink()  # a whole rotated file deleted
    report = verify_dir(log.dir, key, store, segments=True)
    assert not report.ok and report.problems[0].kind == "deleted"


def test_key_file_is_created_private_and_guarded(tmp_path: Path) -> None:
    cfg = _cloud_cfg(tmp_path)
    key = audit_key(cfg, create=True)
    path = Path(key.source)
    assert path == tmp_path / "cloud" / "audit.key" and path.stat().st_mode & 0o777 == 0o600
    assert audit_key(cfg, create=True).secret == key.secret  # kept, never regenerated
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match=r"cloud.audit_key: .*mode 0640.*chmod 600"):
        audit_key(cfg, create=False)
    with pytest.raises(ConfigError, match=r"\(gcp-kms://\) are not implemented"):
        load_key(
            "gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/k",
            setting="cloud.audit_key",
            default_path=path,
            create=True,
        )
    with pytest.raises(ConfigError, match="does not exist"):
        load_key("file:///nonexistent/key", setting="k", default_path=path, create=False)


def test_serve_refuses_a_key_others_may_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "elsewhere" / "audit.key"
    key_file.parent.mkdir()
    key_file.write_text(os.urandom(32).hex())
    os.chmod(key_file, 0o644)
    cfg = _config(tmp_path, audit_key=f"file://{key_file}")
    assert main(["--config", str(cfg), "serve"]) == 2
    err = capsys.readouterr().err
    assert "config error: cloud.audit_key" in err and "mode 0644" in err


def test_wrong_key_is_reported_as_such(tmp_path: Path) -> None:
    log = _log(tmp_path, 3)
    log.close()
    other = AuditKey(os.urandom(32), "elsewhere")
    report = verify_dir(log.dir, other, _store(tmp_path))
    assert [p.kind for p in report.problems] == ["key"]
    assert "3 record(s) sealed with key id" in report.problems[0].reason


def test_torn_last_write_is_reported_not_glued(tmp_path: Path) -> None:
    log = _log(tmp_path, 2)
    log.close()
    with open(log.path, "a") as fh:
        fh.write('{"seq": 3, "time": 1')  # a crash mid-write
    key = audit_key(_cloud_cfg(tmp_path), create=False)
    again = AuditLog(tmp_path / "cloud", key)
    assert again.record(action="qido", outcome="ok")["seq"] == 3
    again.close()
    report = verify_dir(log.dir, key, _store(tmp_path))
    assert [(p.kind, p.where) for p in report.problems] == [("unreadable", "audit.jsonl:3")]


def test_shipping_is_create_only_and_resumes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    log = _log(tmp_path, 3)
    assert log.ship(store) == 3 and log.ship(store) == 0
    log.record(action="stow", outcome="ok", token="t")
    (log.dir / "audit.shipped").unlink()  # lost state: resumes after the last checkpoint
    assert log.ship(store) == 1
    log.close()
    segments = [i.key for i in store.list("audit/cloud_api/") if "/checkpoints/" not in i.key]
    checkpoints = [i.key for i in store.list("audit/cloud_api/checkpoints/")]
    assert len(segments) == 2 and len(checkpoints) == 2
    seq, mac = checkpoints[-1].rsplit("/", 1)[1].removesuffix(".json").split("-")[1:]
    with store.open(checkpoints[-1]) as fh:
        body = json.loads(fh.read())
    assert (body["seq"], body["mac"], body["replica"]) == (int(seq), mac, log.replica)
    assert body["seq"] == 4 and body["count"] == 1 and body["segment"] == segments[1]
    assert body["time"] > 0 and body["key"] == log.chain.key.key_id
    with pytest.raises(ObjectExists):  # create-only: a checkpoint is never replaced
        store.put(checkpoints[-1], b"{}")
    key = audit_key(_cloud_cfg(tmp_path), create=False)
    assert verify_dir(log.dir, key, store, segments=True).ok


def test_unkeyed_log_of_an_older_release_is_moved_aside(tmp_path: Path) -> None:
    data = tmp_path / "cloud"
    data.mkdir()
    (data / "audit.jsonl").write_text('{"seq": 1, "prev": "0", "hash": "ab"}\n')
    (data / "replica_id").write_text("rold")
    log = _log(tmp_path, 2)
    log.close()
    assert log.replica != "rold" and list(data.glob("legacy-*/audit.jsonl"))
    key = audit_key(_cloud_cfg(tmp_path), create=False)
    assert verify_dir(data, key, _store(tmp_path)).ok


def test_checkpoints_on_the_gcs_emulator(
    tmp_path: Path, gcs_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fake-gcs-server honours create-only puts (if_generation_match=0) for checkpoints and
    segments; it keeps no retention policy and no object hold (probed below), so retention is
    a property of a real bucket only (docs/admin-guide.md, Audit trail)."""
    store = gcs_store(gcs_emulator.url)
    log = _log(tmp_path, 40)
    assert log.ship(store) == 40
    log.close()
    (checkpoint,) = [i.key for i in store.list("audit/cloud_api/checkpoints/")]
    with pytest.raises(ObjectExists):
        store.put(checkpoint, b"{}")  # create-only: never replaced
    key = audit_key(_cloud_cfg(tmp_path), create=False)
    assert verify_dir(log.dir, key, store, segments=True).ok
    _rewrite(log.path, lambda recs: recs[:-25])
    report = verify_dir(log.dir, key, store, segments=True)
    assert not report.ok and {p.kind for p in report.problems} == {"truncated"}
    # what the emulator does not do: keep a bucket retention policy or refuse a delete under it
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.bucket(BUCKET)
    bucket.retention_period = 3600
    bucket.patch()
    bucket.reload()
    assert bucket.retention_period is None, "the emulator keeps retention now: update docs"
    store.delete(checkpoint)  # a real bucket under a retention policy refuses this
