"""Deleting and undeleting a study from the edge console, in headless Chromium: a technician
deletes (prompted for a reason) and DCMTK's findscu stops finding the study, undeletes
(confirmed) and finds it again; a study under retention is refused to the technician and
deleted by an admin who confirms the override; a legal hold placed from the console blocks the
admin too. Every action is on the audit trail with the console user's name."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.server import EdgeServer
from edge.users import add_user
from shared.synthetic import StudySpec, write_study
from tests.support.console import running_http, screenshot
from tests.support.dcmtk import run
from tests.support.edge import edge_config, running_edge
from tests.support.net import free_port

PASSWORD = "a long test password"


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[EdgeServer, str]]:
    data = edge_config(tmp_path, http_port=free_port())
    data["retention"] = {"rules": [{"name": "recent", "years": 5}]}
    with running_edge(data) as server:
        with server.db.write() as conn:
            for role in ("admin", "technician"):
                add_user(conn, f"{role}1", role, PASSWORD)
        with running_http(server) as http:
            yield server, f"http://127.0.0.1:{http.port}/"


def store(server: EdgeServer, tmp: Path, spec: StudySpec) -> str:
    files = write_study(spec, tmp / spec.accession_number)
    r = run("storescu", "-aec", "HPACS", "127.0.0.1", server.ports[0], *files)
    assert r.returncode == 0, r.stderr
    row = server.db.reader().execute(
        "SELECT study_uid FROM studies WHERE accession_number = ?", (spec.accession_number,)
    )
    return str(row.fetchone()[0])


def findscu(server: EdgeServer, study: str) -> int:
    """How many STUDY-level matches DCMTK's findscu gets for the study UID."""
    with tempfile.TemporaryDirectory() as out:
        r = run(
            "findscu", "-S", "-aet", "FINDSCU", "-aec", "HPACS", "-X", "-od", out,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "127.0.0.1", server.ports[0],
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return len(list(Path(out).glob("rsp*.dcm")))


def session(browser: Any, url: str, user: str, answers: list[str]) -> Any:
    """A page signed in as `user`; each prompt or confirm is answered with the next of
    `answers` ("" accepts a confirm; text fills a prompt)."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.set_default_timeout(15_000)

    def answer(dialog: Any) -> None:
        dialog.accept(answers.pop(0) if dialog.type == "prompt" else None)

    page.on("dialog", answer)
    page.goto(url + "#studies")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#whoami").get_by_text(user).wait_for()
    return page


def test_delete_and_undelete_a_study(
    browser: Any, edge: tuple[EdgeServer, str], tmp_path: Path
) -> None:
    server, url = edge
    study = store(server, tmp_path, StudySpec(accession_number="ACC1", study_date="20000101"))
    assert findscu(server, study) == 1
    page = session(browser, url, "technician1", ["wrong patient"])
    row = page.locator(f'tr[data-study="{study}"]')
    row.get_by_role("button", name="Delete").click()
    row.locator(".cache-state").get_by_text("deleted").wait_for()
    screenshot(page, "study-deleted")
    assert findscu(server, study) == 0
    row.get_by_role("button", name="Undelete").click()  # confirmed by the dialog handler
    row.locator(".cache-state").get_by_text("local").wait_for()
    assert findscu(server, study) == 1
    page.context.close()
    events = [
        (e["action"], e["actor"], e["reason"], e["outcome"])
        for e in reversed(server_audit(server))
        if e["action"] in ("delete", "undelete")
    ]
    assert events == [
        ("delete", "console:technician1", "wrong patient", "ok"),
        ("undelete", "console:technician1", "", "ok"),
    ]


def test_retention_override_and_legal_hold(
    browser: Any, edge: tuple[EdgeServer, str], tmp_path: Path
) -> None:
    server, url = edge
    today = time.strftime("%Y%m%d")
    study = store(server, tmp_path, StudySpec(accession_number="ACC2", study_date=today))
    tech = session(browser, url, "technician1", ["sent twice"])
    row = tech.locator(f'tr[data-study="{study}"]')
    row.get_by_role("button", name="Delete").click()
    row.locator(".study-msg").get_by_text("under retention until").wait_for()
    assert findscu(server, study) == 1
    tech.context.close()

    answers = ["court order", "sent twice"]
    admin = session(browser, url, "admin1", answers)
    row = admin.locator(f'tr[data-study="{study}"]')
    row.get_by_role("button", name="Hold").click()
    row.get_by_text("held").wait_for()
    row.get_by_role("button", name="Delete").click()
    row.locator(".study-msg").get_by_text("legal hold").wait_for()
    assert findscu(server, study) == 1
    row.get_by_role("button", name="Release").click()
    row.get_by_role("button", name="Hold").wait_for()
    answers.append("sent twice")  # the reason; retention refuses; the admin confirms the override
    row.get_by_role("button", name="Delete").click()
    row.locator(".cache-state").get_by_text("deleted").wait_for()
    screenshot(admin, "study-override")
    assert findscu(server, study) == 0
    admin.context.close()
    actions = [(e["action"], e["outcome"]) for e in reversed(server_audit(server))]
    assert actions == [
        ("delete", "denied"),  # the technician: under retention
        ("hold", "ok"),
        ("delete", "denied"),  # the admin: a legal hold (no override offered for a hold)
        ("release", "ok"),
        ("delete", "denied"),  # under retention: refused first...
        ("delete-override", "ok"),  # ...then the admin confirmed the override
    ]


def server_audit(server: EdgeServer) -> list[dict[str, Any]]:
    from edge.audit import EdgeAudit

    audit = EdgeAudit(server.cfg)
    try:
        return [e for e in audit.recent(200) if e.get("action") != "login"]
    finally:
        audit.close()
