"""Driving the study browser (shared/web/browser.js) in headless Chromium, on either console.

The steps a user takes (search, open a study, a series, download, upload, send) and the checks
that they worked: thumbnails decoded (`naturalWidth > 0`), a ZIP whose members are the stored
objects byte for byte, no failed request meanwhile. The edge and the cloud tests share them.
"""

from __future__ import annotations

import base64
import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom

from tests.support.net import wait_for

THUMB_PATH = re.compile(r"/dicomweb/studies/[^?]+/thumbnail$")


class Watch:
    """Every failed request and every response >= 400 of a page; thumbnail requests in
    flight and the most seen at once (the browser loads a few at a time)."""

    def __init__(self, page: Any) -> None:
        self.problems: list[str] = []
        self.qido: list[str] = []
        self.stow: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.thumbnails = 0
        page.on("requestfailed", self._failed)
        page.on("response", self._response)
        page.on("request", self._request)
        page.on("requestfinished", self._finished)

    def _failed(self, r: Any) -> None:
        if "/thumbnail" in r.url:
            self.in_flight -= 1
        self.problems.append(f"failed {r.url} {r.failure}")

    def _response(self, r: Any) -> None:
        if r.status >= 400:
            self.problems.append(f"{r.status} {r.url}")

    def _request(self, r: Any) -> None:
        path = r.url.split("?", 1)[0]
        if THUMB_PATH.search(path):
            self.thumbnails += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        elif re.search(r"/dicomweb/(studies|series|instances)", r.url) and r.method == "GET":
            self.qido.append(r.url)
        elif r.url.endswith("/dicomweb/studies") and r.method == "POST":
            self.stow.append(r.headers.get("content-type", ""))

    def _finished(self, r: Any) -> None:
        if THUMB_PATH.search(r.url.split("?", 1)[0]):
            self.in_flight -= 1


def search(page: Any, **fields: str) -> None:
    """Fill the search form (name, id, accession, from, to, modality) and submit it."""
    form = page.locator("#browser-search")
    form.locator("button[type=reset]").wait_for()
    before = page.locator("#browser-results").element_handle()
    for name, value in fields.items():
        form.locator(f"[name={name}]").fill(value)
    form.get_by_role("button", name="Search").click()
    page.wait_for_function("el => !el.isConnected", arg=before)  # the page was rendered anew
    page.locator("#browser-results").wait_for()


def listed_patients(page: Any) -> list[str]:
    page.locator("#browser-results table, #browser-empty, #browser-error").first.wait_for()
    return [t.strip() for t in page.locator("tr.patient .patient-name").all_inner_texts()]


def listed_studies(page: Any) -> list[str]:
    return [str(x) for x in page.locator("tr[data-study]").evaluate_all(
        "rows => rows.map(r => r.dataset.study)")]  # fmt: skip


def wait_thumbnails(page: Any, selector: str, count: int, timeout_ms: int = 30_000) -> None:
    """Until `count` thumbnails under `selector` are decoded images (naturalWidth > 0)."""
    page.wait_for_function(
        """([sel, n]) => { const imgs = [...document.querySelectorAll(sel + ' img.thumb')];
             return imgs.length >= n
               && imgs.slice(0, n).every(i => i.complete && i.naturalWidth > 0); }""",
        arg=[selector, count],
        timeout=timeout_ms,
    )


def open_study(page: Any, study_uid: str) -> None:
    page.locator(f'tr[data-study="{study_uid}"] a', has_text="Open").click()
    page.locator("#series-tiles").wait_for()


def open_series(page: Any, series_uid: str) -> None:
    page.locator(f'a[data-series="{series_uid}"]').click()
    page.locator("#instance-tiles figure").first.wait_for()


def download(page: Any, link: Any, target: Path) -> Path:
    with page.expect_download() as info:
        link.click()
    dl = info.value
    assert dl.failure() is None, dl.failure()
    path = target / dl.suggested_filename
    dl.save_as(path)
    return path


def zip_members(path: Path) -> dict[str, bytes]:
    """SOP Instance UID -> bytes of every member (and a check that names are UID paths)."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        for info in zf.infolist():
            study, series, name = info.filename.split("/")
            assert name.endswith(".dcm")
            data = zf.read(info)
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (study, series)
            out[name[: -len(".dcm")]] = data
    return out


def drop_files(page: Any, files: list[Path]) -> None:
    """A synthetic drop of files on the drop zone (a DataTransfer built in the page: what a
    script can make; a real folder drop's directory entries cannot be synthesised)."""
    payload = [{"name": f.name, "b64": base64.b64encode(f.read_bytes()).decode()} for f in files]
    dt = page.evaluate_handle(
        """files => { const dt = new DataTransfer();
             for (const f of files) {
               const raw = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
               dt.items.add(new File([raw], f.name, { type: 'application/dicom' })); }
             return dt; }""",
        payload,
    )
    page.dispatch_event("#upload-drop", "drop", {"dataTransfer": dt})


def drop_folder(page: Any, root: Path, chunk: int = 2) -> None:
    """A folder dropped on the drop zone, as Chromium hands it to a page: items whose
    `webkitGetAsEntry()` is a directory entry, read with `readEntries` in chunks until an
    empty one. A script cannot make a real drag of a folder (a DataTransfer built by a page
    holds files only), so the entries are stand-ins with the same interface, the files in
    them real `File`s: what is tested is the browser page's walk of the tree."""
    tree = [
        {"path": str(p.relative_to(root.parent)), "b64": base64.b64encode(p.read_bytes()).decode()}
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    page.evaluate(
        """([tree, chunk]) => {
          const dir = (name) => ({ name, isFile: false, isDirectory: true, children: [],
            createReader() { let at = 0; const kids = this.children;
              return { readEntries(ok) { const part = kids.slice(at, at + chunk); at += chunk;
                setTimeout(() => ok(part), 0); } }; } });
          const top = dir(tree[0].path.split('/')[0]);
          for (const f of tree) {
            const parts = f.path.split('/');
            let d = top;
            for (const name of parts.slice(1, -1)) {
              let next = d.children.find((c) => c.isDirectory && c.name === name);
              if (!next) { next = dir(name); d.children.push(next); }
              d = next;
            }
            const raw = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
            const file = new File([raw], parts.at(-1));
            d.children.push({ name: parts.at(-1), isFile: true, isDirectory: false,
              file(ok) { setTimeout(() => ok(file), 0); } });
          }
          const ev = new Event('drop', { bubbles: true, cancelable: true });
          Object.defineProperty(ev, 'dataTransfer', { value: { items: [
            { kind: 'file', webkitGetAsEntry: () => top, getAsFile: () => null }], files: [] } });
          document.querySelector('#upload-drop').dispatchEvent(ev);
        }""",
        [tree, chunk],
    )


def upload_done(page: Any, timeout_ms: int = 60_000) -> str:
    page.locator("#upload-status.result").wait_for(timeout=timeout_ms)
    return str(page.locator("#upload-status").inner_text())


def report_rows(page: Any) -> dict[str, str]:
    """File path -> its result text in the upload report."""
    rows = page.locator("#upload-report tr[data-file]")
    return {
        str(r.get_attribute("data-file")): r.locator("td").nth(1).inner_text().strip()
        for r in rows.all()
    }


def poll(fn: Callable[[], Any], timeout_s: float, what: str) -> None:
    wait_for(fn, timeout_s, what)
