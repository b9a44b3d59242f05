"""Viewer benchmark: the same OHIF build in headless Chromium against hpacs and Orthanc 1.10.

Two series, stored in both servers: a CT of `--slices` instances (512x512, 16-bit: 0.5 MB each,
default 500) and a JPEG-lossless series of `--frames` instances (default 200, encoded by DCMTK
`dcmcjpeg`). Targets:
- `hpacs-cloud`: `hpacs-cloud serve` (a subprocess) over a file:// bucket journaled like a sync
  agent; the viewer is its own `/viewer/`, same origin as its `/dicomweb`, bearer token sent
  by the browser context.
- `hpacs-edge`: `hpacs-edge serve` (a subprocess; DIMSE off, HTTP on a free port), the data
  loaded beforehand with `hpacs-edge import` (the one ingest path) into its cache and index;
  the viewer is its own `/viewer/`, same origin as its `/dicomweb`, console token sent as a
  bearer header by the browser context.
- `orthanc`: `Orthanc` with the Debian DICOMweb plugin; the same build is served by
  shared/web/viewer.py from a small static server on another port, its data source pointing
  at Orthanc's `/dicom-web` (Orthanc sends no CORS headers: Chromium runs with web security
  off for every target alike, so the page may call it).
A target is a name -> function returning (viewer base URL, DICOMweb URL, headers).

The edge's `/metadata` is timed twice per rep: the first request after its start (every
instance read whole and verified, then encoded) and again (cached, the figure the target
names). The cloud's likewise (its first read is a 64 KiB range per object).

Per rep and target (order alternating between reps), a fresh browser context first opens the
study list (scripts reach the cache), then opens `viewer?StudyInstanceUIDs=<uid>` and times,
from that navigation's start: the first non-black pixel of the viewport canvas (checked in the
page every animation frame on an 8x8 copy), and the last `/frames/` response of the series
(resource timing). Separately, the WADO-RS study `/metadata` of the CT (N instances) is timed
with a plain HTTP client. Medians over `--reps` (>= 3 for a figure worth quoting).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from cloud import Server, hpacs, orthanc
from common import ENV, ROOT, free_port, table

from shared.catalog import CatalogRow, encode_batch
from shared.checksum import crc32c_bytes
from shared.dicom import read_header
from shared.keys import catalog_key, instance_key
from shared.store.base import open_store
from shared.synthetic import StudySpec, iter_study

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-web-security",  # Orthanc answers without CORS headers; same flags for all
]
# In the page: the first non-black pixel of the viewport canvas, per animation frame.
WATCH = """
performance.setResourceTimingBufferSize(100000);
window.__firstImage = null;
(function poll() {
  const c = document.querySelector('canvas.cornerstone-canvas');
  if (c && c.width) {
    const t = document.createElement('canvas'); t.width = 8; t.height = 8;
    const g = t.getContext('2d'); g.drawImage(c, 0, 0, 8, 8);
    const d = g.getImageData(0, 0, 8, 8).data;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] > 8 || d[i + 1] > 8 || d[i + 2] > 8) {
        window.__firstImage = performance.now();
        return;
      }
    }
  }
  requestAnimationFrame(poll);
})();
"""
FRAMES_DONE = """(n) => {
  const done = performance.getEntriesByType('resource').filter(e => e.name.includes('/frames/'));
  const urls = new Set(done.map(e => e.name.split('/frames/')[0]));
  return urls.size >= n ? Math.max(...done.map(e => e.responseEnd)) : null;
}"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--slices", type=int, default=500, help="CT instances (0.5 MB each)")
    p.add_argument("--frames", type=int, default=200, help="JPEG-lossless instances")
    p.add_argument("--size", type=int, default=512, help="rows = columns of every image")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--targets", default="hpacs-edge,hpacs-cloud,orthanc")
    p.add_argument("--timeout", type=float, default=300.0, help="per study open, seconds")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args(argv)


# ---- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    name: str
    study_uid: str
    files: list[Path]


def make_series(work: Path, args: argparse.Namespace) -> list[Series]:
    out = []
    for name, count, desc in (
        ("ct", args.slices, "BENCH CT"),
        ("jpegll", args.frames, "BENCH JPL"),
    ):
        folder = work / name
        folder.mkdir(parents=True)
        spec = StudySpec(
            patient_id=f"VB-{name}",
            study_description=desc,
            instances_per_series=count,
            rows=args.size,
            columns=args.size,
        )
        files, study = [], ""
        for i, ds in enumerate(iter_study(spec)):
            ds.ImagePositionPatient, ds.ImageOrientationPatient = (
                [0, 0, float(i)],
                [1, 0, 0, 0, 1, 0],
            )
            ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1
            path = folder / f"{i:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
            study = ds.StudyInstanceUID
        if name == "jpegll":  # JPEG lossless SV1 (1.2.840.10008.1.2.4.70), DCMTK's encoder
            for f in files:
                subprocess.run(["dcmcjpeg", "+e1", str(f), str(f) + ".j"], check=True)
                Path(str(f) + ".j").replace(f)
        out.append(Series(name, study, files))
    return out


def load_hpacs(bucket: Path, series: list[Series]) -> None:
    store = open_store(f"file://{bucket}")
    rows = []
    for s in series:
        for f in s.files:
            data = f.read_bytes()
            h = read_header(data)
            key = instance_key(h.study_uid, h.series_uid, h.sop_instance_uid)
            store.put(key, data, content_type="application/dicom")
            rows.append(CatalogRow(h, len(data), crc32c_bytes(data), key, "bench", time.time()))
    store.put(catalog_key("bench", 1), encode_batch(rows))


def load_orthanc(base: str, series: list[Series]) -> None:
    session = requests.Session()
    for s in series:
        for f in s.files:
            session.post(f"{base}/instances", data=f.read_bytes(), timeout=60).raise_for_status()


# ---- targets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    viewer: str  # the viewer's base URL, ending in /viewer/
    dicomweb: str
    headers: dict[str, str]


@contextmanager
def static_viewer(dicomweb: str) -> Iterator[str]:
    """The same OHIF build, served by shared/web/viewer.py on its own port (no auth)."""
    import asyncio

    from aiohttp import web

    from shared.web import viewer

    port = free_port()
    app = web.Application()

    async def anyone(request: web.Request) -> bool:
        return True

    settings = viewer.ViewerSettings(dist=viewer.locate_build(), dicomweb_path=dicomweb)
    viewer.mount(app, settings, anyone)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/viewer/"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def start_hpacs(stack: ExitStack, work: Path, series: list[Series]) -> Target:
    bucket = work / "bucket"
    load_hpacs(bucket, series)
    srv, dicomweb, token_file = hpacs(work / "hpacs", bucket)
    stack.enter_context(srv)
    token = Path(token_file).read_text().strip()
    base = dicomweb.rsplit("/dicomweb", 1)[0]
    return Target("hpacs-cloud", base + "/viewer/", dicomweb, {"Authorization": f"Bearer {token}"})


def start_edge(stack: ExitStack, work: Path, series: list[Series]) -> Target:
    """`hpacs-edge serve` with HTTP only; the series imported first through `import`."""
    d = work / "edge"
    d.mkdir(parents=True)
    http = free_port()
    config = d / "hpacs.toml"
    config.write_text(
        f'[edge]\nport = 0\ndata_dir = "{d / "data"}"\nmin_free_bytes = 0\n'
        f'http_port = {http}\nlog_level = "WARNING"\n[edge.tls]\nport = 0\n'
        f'[sync]\nstore_url = "file://{d / "bucket"}"\n'
    )
    exe = str(ROOT / ".venv" / "bin" / "hpacs-edge")
    folders = [str(s.files[0].parent) for s in series]
    subprocess.run([exe, "--config", str(config), "import", *folders], check=True, env=ENV)
    stack.enter_context(Server("hpacs-edge", [exe, "--config", str(config), "serve"], http, d))
    token = (d / "data" / "console_token").read_text().strip()
    base = f"http://127.0.0.1:{http}"
    return Target(
        "hpacs-edge", base + "/viewer/", base + "/dicomweb", {"Authorization": f"Bearer {token}"}
    )


def start_orthanc(stack: ExitStack, work: Path, series: list[Series]) -> Target:
    srv, dicomweb = orthanc(work / "orthanc")
    stack.enter_context(srv)
    load_orthanc(dicomweb.rsplit("/dicom-web", 1)[0], series)
    return Target("orthanc", stack.enter_context(static_viewer(dicomweb)), dicomweb, {})


STARTERS: dict[str, Callable[[ExitStack, Path, list[Series]], Target]] = {
    "hpacs-edge": start_edge,
    "hpacs-cloud": start_hpacs,
    "orthanc": start_orthanc,
}


# ---- measurements --------------------------------------------------------------------------------


def open_study(
    browser: object, t: Target, s: Series, timeout_s: float
) -> tuple[float | None, float | None]:
    """(first image ms, all frames ms) from the navigation's start; None: not within the
    timeout (e.g. a viewport that stays black because a frame could not be decoded)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    ctx = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": 1280, "height": 900}, extra_http_headers=t.headers
    )
    try:
        page = ctx.new_page()
        page.goto(t.viewer)  # the study list: scripts into this context's cache
        page.wait_for_load_state("networkidle", timeout=timeout_s * 1000)
        page.add_init_script(WATCH)
        page.goto(f"{t.viewer}viewer?StudyInstanceUIDs={s.study_uid}")
        out: list[float | None] = []
        for expr, arg in (("window.__firstImage", None), (FRAMES_DONE, len(s.files))):
            try:
                handle = page.wait_for_function(expr, arg=arg, timeout=timeout_s * 1000, polling=50)
                out.append(float(handle.json_value()))
            except PlaywrightTimeout:
                out.append(None)
        return out[0], out[1]
    finally:
        ctx.close()


def metadata_ms(t: Target, s: Series) -> float:
    t0 = time.perf_counter()
    r = requests.get(
        f"{t.dicomweb}/studies/{s.study_uid}/metadata",
        headers={**t.headers, "Accept": "application/dicom+json"},
        timeout=300,
    )
    r.raise_for_status()
    assert len(r.json()) == len(s.files), (t.name, len(r.json()))
    return (time.perf_counter() - t0) * 1000


def run(args: argparse.Namespace, work: Path) -> int:
    from playwright.sync_api import sync_playwright

    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    print(f"making data: CT {args.slices} x {args.size}^2, JPEG-lossless {args.frames}", flush=True)
    series = make_series(work / "data", args)
    results: dict[tuple[str, str, str], list[float | None]] = {}
    with ExitStack() as stack:
        targets = [STARTERS[n](stack, work, series) for n in names]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                for rep in range(args.reps):
                    order = targets if rep % 2 == 0 else targets[::-1]
                    for t in order:
                        first_meta = metadata_ms(t, series[0])
                        if rep == 0:
                            results[(t.name, "ct", "metadata-first")] = [first_meta]
                        results.setdefault((t.name, "ct", "metadata"), []).append(
                            metadata_ms(t, series[0])
                        )
                        for s in series:
                            first, frames = open_study(browser, t, s, args.timeout)
                            results.setdefault((t.name, s.name, "first"), []).append(first)
                            results.setdefault((t.name, s.name, "frames"), []).append(frames)
                            print(
                                f"rep {rep + 1} {t.name} {s.name}: first {_ms(first)}, "
                                f"all frames {_ms(frames)}",
                                flush=True,
                            )
            finally:
                browser.close()
    report(args, names, results)
    return 0


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def report(
    args: argparse.Namespace,
    names: list[str],
    results: dict[tuple[str, str, str], list[float | None]],
) -> None:
    """Medians; a measure that timed out in any rep is "-" (no median of partial data)."""
    med = {
        k: statistics.median(x for x in v if x is not None) if None not in v else None
        for k, v in results.items()
    }
    rows = []
    for what, s, label in (
        ("first", "ct", f"CT {args.slices}: first image"),
        ("frames", "ct", f"CT {args.slices}: all frames"),
        ("first", "jpegll", f"JPEG-lossless {args.frames}: first image"),
        ("frames", "jpegll", f"JPEG-lossless {args.frames}: all frames"),
        ("metadata-first", "ct", f"WADO-RS /metadata, {args.slices} instances, first"),
        ("metadata", "ct", f"WADO-RS /metadata, {args.slices} instances, again"),
    ):
        vals = [med.get((n, s, what)) for n in names]
        ratios = [f"{v / vals[-1]:.2f}" if v and vals[-1] else "" for v in vals[:-1]]
        rows.append([label, *[_ms(v) for v in vals], *ratios])
    print(f"\nmedians of {args.reps} reps (alternating order)")
    heads = [f"{n} / {names[-1]}" for n in names[:-1]]
    print(table(["measure", *names, *heads], rows))
    print(json.dumps({"|".join(k): v for k, v in results.items()}))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.keep:
        work = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
        print(f"work directory: {work}")
        return run(args, work)
    with tempfile.TemporaryDirectory(prefix="bench-viewer-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
