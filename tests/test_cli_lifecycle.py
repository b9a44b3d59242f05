"""`hpacs-edge studies delete|undelete|hold|release|holds` and `retention report`: exit status
non-zero with a one-line reason when a rule forbids the action, every attempt audited."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from shared.synthetic import StudySpec, write_study
from tests.support.edge import cli, edge_config, write_toml


@pytest.fixture
def config(tmp_path: Path) -> Path:
    data = edge_config(tmp_path)
    data["retention"] = {
        "delete_grace_days": 3,
        "rules": [
            {"name": "children", "max_patient_age_years": 18, "until_patient_age_years": 28,
             "years": 10},
            {"name": "adults", "years": 10},
        ],
    }  # fmt: skip
    return write_toml(tmp_path / "hpacs.toml", data)


@pytest.fixture
def hpacs(config: Path, edge_cli: Any) -> Any:
    """The CLI on this module's config (conftest's edge_cli)."""
    return functools.partial(edge_cli, config)


def _import(hpacs: Any, tmp_path: Path, name: str, **spec: Any) -> str:
    files = write_study(StudySpec(**spec), tmp_path / name)
    code, _, err = hpacs("import", str(tmp_path / name))
    assert code == 0, err
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    files = sorted((tmp_path / "edge" / "audit").glob("*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_delete_undelete_override_and_holds(hpacs: Any, tmp_path: Path, config: Path) -> None:
    today = time.strftime("%Y%m%d")
    recent = _import(hpacs, tmp_path, "recent", study_date=today, patient_id="PCLI")
    old = _import(hpacs, tmp_path, "old", study_date="20000101", patient_birth_date="19500101")

    code, _, err = hpacs("studies", "delete", recent, "--reason", "oops")
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "under retention until" in err and "rule 'adults'" in err and "--override" in err
    code, _, err = hpacs("studies", "delete", recent, "--override")
    assert code == 1 and "--override needs --reason" in err
    code, out, _ = hpacs("studies", "delete", recent, "--override", "--reason", "wrong patient")
    assert code == 0 and "deleted study" in out and "3 instance(s)" in out
    assert "kept in the bucket for 3 days" in out
    code, out, _ = hpacs("studies")
    assert "deleted" in out  # the listing shows deleted studies with their state
    code, out, _ = hpacs("studies", "undelete", recent)
    assert code == 0 and "undeleted study" in out

    # a legal hold on the patient blocks even an admin's override; release, then it works
    code, out, _ = hpacs("studies", "hold", "--patient", "PCLI", "--reason", "litigation")
    assert code == 0 and "hold 1 placed" in out
    code, out, _ = hpacs("studies", "holds")
    assert "litigation" in out.splitlines()[1]
    code, _, err = hpacs("studies", "delete", recent, "--override", "--reason", "again")
    assert code == 1 and "legal hold" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit, match="2"):  # argparse: --reason is required for a hold
        hpacs("studies", "hold", recent)
    code, out, _ = hpacs("studies", "release", "--patient", "PCLI", "--reason", "settled")
    assert code == 0 and "released hold(s) 1" in out

    # expired (an adult's study of 2000): no override needed
    code, out, _ = hpacs("studies", "delete", old)
    assert code == 0
    code, _, err = hpacs("studies", "delete", old)
    assert code == 1 and "already deleted" in err

    events = [(e["action"], e["outcome"], e["study_uid"]) for e in _audit(tmp_path)]
    assert events == [
        ("delete", "denied", recent),
        ("delete-override", "ok", recent),
        ("undelete", "ok", recent),
        ("hold", "ok", ""),
        ("delete-override", "denied", recent),
        ("release", "ok", ""),
        ("delete", "ok", old),
        ("delete", "error", old),
    ]
    override = _audit(tmp_path)[1]
    assert override["reason"] == "wrong patient" and "rule 'adults'" in override["detail"]
    assert override["actor"].startswith("cli:")


def test_retention_report_lists_what_expires_when(hpacs: Any, tmp_path: Path) -> None:
    child = _import(hpacs, tmp_path, "c", study_date="20200110", patient_birth_date="20100101")
    adult = _import(hpacs, tmp_path, "a", study_date="20100110", patient_birth_date="19700101")
    unknown = _import(hpacs, tmp_path, "u", study_date="20200110", patient_birth_date="")
    hpacs("studies", "hold", adult, "--reason", "keep")
    code, out, _ = hpacs("retention", "report")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert "2020-01-10" in rows[adult] and " held " in rows[adult]
    assert "2038-01-01" in rows[child] and "children (until age 28)" in rows[child]
    assert "forever" in rows[unknown] and "birth date unknown" in rows[unknown]
    # soonest first
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == [adult, child, unknown]
    assert out.splitlines()[-1] == "1 held, 2 kept; auto_purge off"


def test_entry_point_exit_status(config: Path, tmp_path: Path) -> None:
    r = cli(config, "studies", "delete", "1.2.3.4.5")
    # (the first audited action also logs the creation of the audit key)
    assert r.returncode == 1 and r.stderr.splitlines()[-1] == "hpacs-edge: no study 1.2.3.4.5"
    r = cli(config, "studies", "undelete", "not-a-uid")
    assert r.returncode == 1 and "not a valid study UID" in r.stderr
