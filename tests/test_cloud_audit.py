"""`hpacs-cloud audit verify` detects an edited, a deleted and a reordered record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_api.audit import AuditLog, read_records, verify_records, verify_store
from cloud_api.cli import main
from shared.store.base import open_store


def _write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "hpacs.toml"
    cfg.write_text(
        f'[cloud]\ndata_dir = "{tmp_path / "cloud"}"\nstore_url = "file://{tmp_path / "bucket"}"\n'
        f'tokens_file = "{tmp_path / "tokens.json"}"\n'
    )
    return cfg


def _log(tmp_path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(tmp_path / "cloud")
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
    log.close()
    return log


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_intact_log_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _log(tmp_path)
    assert main(["--config", str(_write_config(tmp_path)), "audit", "verify"]) == 0
    assert "OK" in capsys.readouterr().out


def test_chain_continues_after_restart(tmp_path: Path) -> None:
    _log(tmp_path, 2)
    log = _log(tmp_path, 2)
    recs = list(read_records(log.path))
    assert [r["seq"] for r in recs] == [1, 2, 3, 4] and not verify_records(recs)


def test_edited_record_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(tmp_path)
    lines = _lines(log.path)
    rec = json.loads(lines[2])
    rec["outcome"] = "denied"  # an edit that keeps valid JSON and the stored hash
    lines[2] = json.dumps(rec, sort_keys=True) + "\n"
    log.path.write_text("".join(lines))
    assert main(["--config", str(_write_config(tmp_path)), "audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "seq 3" in out and "edited" in out


def test_deleted_record_is_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = _lines(log.path)
    del lines[1]
    log.path.write_text("".join(lines))
    problems = verify_records(read_records(log.path))
    assert problems and problems[0].line == 2
    assert any("deleted" in p.reason for p in problems)


def test_reordered_records_are_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = _lines(log.path)
    lines[1], lines[3] = lines[3], lines[1]
    log.path.write_text("".join(lines))
    problems = verify_records(read_records(log.path))
    assert {p.line for p in problems} >= {2}
    assert any("reordered" in p.reason for p in problems)


def test_rehashed_edit_is_still_detected(tmp_path: Path) -> None:
    """Recomputing the edited record's own hash only moves the break to the next link."""
    from cloud_api.audit import record_hash

    log = _log(tmp_path)
    lines = _lines(log.path)
    rec = json.loads(lines[2])
    rec["token"] = "someone-else"
    rec["hash"] = record_hash(rec)
    lines[2] = json.dumps(rec, sort_keys=True) + "\n"
    log.path.write_text("".join(lines))
    problems = verify_records(read_records(log.path))
    assert [p.line for p in problems] == [4]


def test_shipped_copies_verify_in_the_bucket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(f"file://{tmp_path / 'bucket'}")
    log = AuditLog(tmp_path / "cloud")
    for i in range(3):
        log.record(action="wado", outcome="ok", token="t", study_uid=f"1.2.{i}")
    assert log.ship(store) == 3
    log.record(action="stow", outcome="ok", token="t")
    assert log.ship(store) == 1 and log.ship(store) == 0
    log.close()
    keys = [i.key for i in store.list("audit/cloud_api/")]
    assert len(keys) == 2 and all(k.startswith("audit/cloud_api/") for k in keys)
    assert verify_store(store, log.replica) == []
    assert main(["--config", str(_write_config(tmp_path)), "audit", "verify", "--bucket"]) == 0
    # a shipped object removed from the bucket breaks the chain there too
    store.delete(sorted(keys)[0])
    assert verify_store(store, log.replica)


def test_torn_last_write_is_reported_not_glued(tmp_path: Path) -> None:
    log = _log(tmp_path, 2)
    with open(log.path, "a") as fh:
        fh.write('{"seq": 3, "time": 1')  # a crash mid-write
    again = AuditLog(tmp_path / "cloud")
    rec = again.record(action="qido", outcome="ok")
    again.close()
    assert rec["seq"] == 3  # the chain resumes after the last complete record
    problems = verify_records(read_records(log.path))
    assert [p.line for p in problems] == [3]  # the torn line is flagged, nothing else breaks
