"""Correcting a patient name from the edge console, in headless Chromium (Debian's, through
Playwright): a technician opens the study's correction form, sees the current name, saves a
new one; every instance is rewritten, DCMTK findscu finds the new name, the audit trail names
the technician and the attribute. A wrong value is refused with the field marked; a viewer
has no correction button. Screenshots in test-artifacts/console/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from edge.users import add_user
from shared.synthetic import StudySpec
from tests.support.console import new_page, running_http, screenshot
from tests.support.dcmtk import run
from tests.support.edge import edge_config, running_edge
from tests.support.net import free_port
from tests.test_console_admin import PASSWORD, Site, sign_in


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    data = edge_config(tmp_path, http_port=free_port())  # with a file:// bucket for originals
    with running_edge(data) as edge:
        with edge.db.write() as conn:
            for role in ("technician", "viewer"):
                add_user(conn, f"{role}1", role, PASSWORD)
        with running_http(edge) as http:
            yield Site(edge, http, tmp_path)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with new_page(browser, height=1100, timeout_ms=30_000) as pg:
        yield pg


def _names(site: Site, tmp: Path) -> list[str]:
    out = tmp / "find"
    out.mkdir(exist_ok=True)
    for old in out.glob("*"):
        old.unlink()
    r = run("findscu", "-S", "-aet", "FINDSCU", "-aec", "HPACS", "-X", "-od", out, "127.0.0.1",
            site.edge.ports[0], "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return [str(pydicom.dcmread(p).PatientName) for p in sorted(out.glob("rsp*.dcm"))]


def test_a_technician_corrects_a_patient_name(page: Any, site: Site, tmp_path: Path) -> None:
    files = site.store(
        StudySpec(instances_per_series=2, accession_number="ACC-FIX", patient_name="WRONG^NAME")
    )
    sign_in(page, site, "technician1", "studies")
    row = page.get_by_role("row").filter(has_text="ACC-FIX")
    row.get_by_role("button", name="Correct").click()
    form = page.locator("#correction-form")
    assert form.get_by_label("Patient name").input_value() == "WRONG^NAME"
    form.get_by_label("Birth date").fill("19991332")  # no such date: refused, field marked
    form.get_by_role("button", name="Save correction").click()
    form.get_by_text("PatientBirthDate: a date YYYYMMDD").wait_for()
    assert "invalid" in (form.locator("#fix-PatientBirthDate").get_attribute("class") or "")
    form.get_by_label("Birth date").fill("19700101")
    form.get_by_label("Patient name").fill("RIGHT^NAME")
    form.get_by_label("Reason").fill("ticket 7: name typed wrong at the modality")
    screenshot(page, "correction-form")
    form.get_by_role("button", name="Save correction").click()
    page.locator("#correction-done").get_by_text(
        "Corrected PatientName: 2 instance(s) rewritten."
    ).wait_for()
    screenshot(page, "correction-done")

    assert _names(site, tmp_path) == ["RIGHT^NAME"]
    rows = site.edge.db.reader().execute("SELECT path FROM instances").fetchall()
    assert len(rows) == len(files)
    for r in rows:
        assert str(pydicom.dcmread(site.edge.cache.root / r["path"]).PatientName) == "RIGHT^NAME"
    (rec,) = [e for e in site.http.audit.recent() if e["action"] == "study-modify"]
    assert (rec["actor"], rec["role"], rec["outcome"]) == ("technician1", "technician", "ok")
    assert "attributes=PatientName" in rec["detail"] and "RIGHT" not in str(rec)
    assert rec["reason"].startswith("ticket 7")
    # the form shows the corrected value when opened again
    page.get_by_role("row").filter(has_text="ACC-FIX").get_by_role("button", name="Correct").click()
    assert page.locator("#correction-form").get_by_label("Patient name").input_value() == (
        "RIGHT^NAME"
    )


def test_a_viewer_has_no_correction_button(page: Any, site: Site) -> None:
    site.store(StudySpec(instances_per_series=1, accession_number="ACC-VIEW"))
    sign_in(page, site, "viewer1", "studies")
    page.get_by_role("row").filter(has_text="ACC-VIEW").wait_for()
    assert page.get_by_role("button", name="Correct").count() == 0
