"""Cloud API benchmark: QIDO-RS and WADO-RS through dicomweb-client, hpacs vs Orthanc's DICOMweb
plugin with the same data in the same run; catalog index rebuild time for large catalogs.

1. A synthetic study of N instances (default 500) is loaded into Orthanc (REST upload) and into
   a file:// bucket with its catalog journal, as the sync agent would write it.
2. Both servers run as processes on 127.0.0.1; QIDO `/studies?PatientID=` (median of many) and
   WADO-RS study retrieval (dicomweb-client `retrieve_study`, and the raw multipart bytes with
   `requests`) are timed alternately.
3. Synthetic catalog journals of 100k (and `--big`, default 1M) rows are written and the index is
   rebuilt from them; QIDO `/studies?PatientID=` is then timed against that index through the API.

    .venv/bin/python bench/cloud.py                    # 500 instances, 100k and 1M rows
    .venv/bin/python bench/cloud.py --big 0 --reps 2   # quick look
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import requests
from common import ENV, free_port, median, table, wait_port
from dicomweb_client.api import DICOMwebClient

from cloud_api.catalog.poller import Poller
from cloud_api.catalog.sqlite import SqliteCatalog
from shared.catalog import CatalogRow, encode_batch
from shared.checksum import crc32c_bytes
from shared.dicom import read_header
from shared.keys import catalog_key, instance_key
from shared.store.base import ObjectStore, open_store
from shared.synthetic import ROOT as UID_ROOT
from shared.synthetic import StudySpec, iter_study


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--instances", type=int, default=500, help="instances in the study (500)")
    p.add_argument("--size", type=int, default=256, help="rows = columns of each image (256)")
    p.add_argument("--reps", type=int, default=3, help="WADO-RS repetitions per server (3)")
    p.add_argument("--queries", type=int, default=200, help="QIDO queries per measurement (200)")
    p.add_argument("--rows", type=int, default=100_000, help="catalog rows for the rebuild (100k)")
    p.add_argument("--big", type=int, default=1_000_000, help="second, larger catalog; 0 skips")
    p.add_argument("--workdir", default="", help="where data goes (default: a temp dir on disk)")
    return p.parse_args(argv)


# ---- servers -------------------------------------------------------------------------------------


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, cwd: Path) -> None:
        self.name, self.cmd, self.port, self.cwd = name, cmd, port, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        log = open(self.cwd / f"{self.name}.log", "wb")
        self.proc = subprocess.Popen(
            self.cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=self.cwd
        )
        wait_port(self.port, self.proc, timeout_s=600)
        return self

    def cpu_s(self) -> float:
        """The server process's user+system CPU seconds so far (threads included)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def orthanc(work: Path) -> tuple[Server, str]:
    work.mkdir(parents=True, exist_ok=True)
    http = free_port()
    cfg = {
        "Name": "bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "StorageCompression": False,
        "DicomPort": free_port(),
        "HttpPort": http,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": "127.0.0.1"},
        "KeepAlive": True,
        "SyncStorageArea": False,
    }
    (work / "orthanc.json").write_text(json.dumps(cfg))
    return Server("orthanc", ["Orthanc", str(work / "orthanc.json")], http, work), (
        f"http://127.0.0.1:{http}/dicom-web"
    )


def hpacs(work: Path, bucket: Path) -> tuple[Server, str, str]:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    token_file = work / "admin.token"
    (work / "hpacs.toml").write_text(
        f'[cloud]\nport = {port}\nstore_url = "file://{bucket}"\ndata_dir = "{work}"\n'
        f'tokens_file = "{work / "tokens.json"}"\ndev_admin_token_file = "{token_file}"\n'
        f'catalog_poll_interval_s = 3600\nlog_level = "WARNING"\n'
    )
    cmd = [sys.executable, "-m", "cloud_api", "--config", str(work / "hpacs.toml"), "serve"]
    srv = Server("hpacs", cmd, port, work)
    return srv, f"http://127.0.0.1:{port}/dicomweb", str(token_file)


# ---- data ----------------------------------------------------------------------------------------


def load_study(args: argparse.Namespace, store: ObjectStore, orthanc_url: str) -> tuple[str, int]:
    spec = StudySpec(
        patient_id="BENCH01",
        instances_per_series=args.instances // 2 or 1,
        series_count=2,
        rows=args.size,
        columns=args.size,
    )
    rows, total = [], 0
    session = requests.Session()
    study_uid = ""
    for ds in iter_study(spec):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
        h = read_header(data)
        study_uid = h.study_uid
        key = instance_key(h.study_uid, h.series_uid, h.sop_instance_uid)
        store.put(key, data, content_type="application/dicom")
        rows.append(CatalogRow(h, len(data), crc32c_bytes(data), key, "bench", time.time()))
        r = session.post(orthanc_url.replace("/dicom-web", "/instances"), data=data, timeout=60)
        r.raise_for_status()
        total += len(data)
    store.put(catalog_key("bench", 1), encode_batch(rows))
    return study_uid, total


def synthetic_catalog(store: ObjectStore, site: str, n: int, batch: int = 500) -> None:
    """n catalog rows: studies of 100 instances in 2 series, 1 study per patient, cheap to make."""
    rng = random.Random(7)
    template = json.loads(json.dumps(_template()))
    seq, lines = 0, []
    for i in range(n):
        study, series = i // 100, i // 50
        d = dict(template)
        d["study_uid"] = f"{UID_ROOT}1.{study}"
        d["series_uid"] = f"{UID_ROOT}2.{series}"
        d["sop_instance_uid"] = f"{UID_ROOT}3.{i}"
        d["patient_id"] = f"P{study:07d}"
        d["patient_name"] = f"NAME{rng.randrange(10**6)}^TEST"
        d["study_date"] = f"20{10 + study % 15:02d}{1 + study % 12:02d}{1 + study % 28:02d}"
        d["instance_number"] = i % 50 + 1
        d["series_number"] = series % 2 + 1
        d["object_key"] = (
            f"instances/{d['study_uid']}/{d['series_uid']}/{d['sop_instance_uid']}.dcm"
        )
        lines.append(json.dumps(d, separators=(",", ":")))
        if len(lines) == batch or i == n - 1:
            seq += 1
            data = gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)
            store.put(catalog_key(site, seq), data)
            lines = []


def _template() -> dict:
    from shared.dicom import Header

    h = Header(
        "1.2",
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2",
        "1.2",
        "1.2.840.10008.1.2.1",
        modality="CT",
        study_description="CT CHEST",
        patient_sex="F",
        rows=512,
        columns=512,
    )
    return CatalogRow(h, 524_288, "00000000", "k", "big", 0.0).to_json()


# ---- measurements --------------------------------------------------------------------------------


def qido_ms(url: str, token: str, patient_id: str, n: int) -> float:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    c = DICOMwebClient(url, headers=headers)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        found = c.search_for_studies(search_filters={"PatientID": patient_id})
        times.append(time.perf_counter() - t0)
        assert len(found) == 1, (url, len(found))
    return median(times) * 1000


def wado_client_s(url: str, token: str, study: str, expected: int) -> float:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    c = DICOMwebClient(url, headers=headers)
    t0 = time.perf_counter()
    got = c.retrieve_study(study)
    dt = time.perf_counter() - t0
    assert len(got) == expected, (url, len(got))
    return dt


def wado_raw_s(url: str, token: str, study: str, total: int) -> float:
    headers = {"Accept": 'multipart/related; type="application/dicom"'}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    t0 = time.perf_counter()
    n = 0
    with requests.get(f"{url}/studies/{study}", headers=headers, stream=True, timeout=600) as r:
        r.raise_for_status()
        for chunk in r.iter_content(1 << 20):
            n += len(chunk)
    dt = time.perf_counter() - t0
    assert n >= total, (url, n, total)
    return dt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hpacs-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, base)
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)


def run(args: argparse.Namespace, base: Path) -> int:
    bucket = base / "bucket"
    store = open_store(f"file://{bucket}")
    osrv, ourl = orthanc(base / "orthanc")
    results: list[list[str]] = []
    with osrv:
        t0 = time.perf_counter()
        study, total = load_study(args, store, ourl)
        print(
            f"loaded {args.instances} instances ({total / 1e6:.0f} MB) into both in "
            f"{time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        hsrv, hurl, token_file = hpacs(base / "hpacs", bucket)
        with hsrv:
            token = Path(token_file).read_text().strip()
            q = {"hpacs": [], "orthanc": []}
            for _ in range(2):  # alternate to share the machine's noise
                q["hpacs"].append(qido_ms(hurl, token, "BENCH01", args.queries // 2))
                q["orthanc"].append(qido_ms(ourl, "", "BENCH01", args.queries // 2))
            for url, tok in ((hurl, token), (ourl, "")):  # warm up caches and thread pools
                wado_raw_s(url, tok, study, total)
            w = {k: {"client": [], "raw": [], "cpu": []} for k in ("hpacs", "orthanc")}
            srv = {"hpacs": hsrv, "orthanc": osrv}
            for _ in range(args.reps):
                for name, url, tok in (("hpacs", hurl, token), ("orthanc", ourl, "")):
                    w[name]["raw"].append(wado_raw_s(url, tok, study, total))
                    c0 = srv[name].cpu_s()
                    w[name]["client"].append(wado_client_s(url, tok, study, args.instances))
                    w[name]["cpu"].append(srv[name].cpu_s() - c0)
            # each rep times hpacs and Orthanc back to back: the median of the paired ratios
            # is steadier than a ratio of medians on a shared, noisy machine
            hc, oc = w["hpacs"]["client"], w["orthanc"]["client"]
            paired = [o / h for h, o in zip(hc, oc, strict=True)]
            print(
                "  WADO-RS dicomweb-client throughput hpacs/orthanc, paired per rep: "
                + ", ".join(f"{x:.2f}" for x in paired)
                + f"; median {median(paired):.2f}x",
                flush=True,
            )
            for name in ("hpacs", "orthanc"):
                raw, cli = median(w[name]["raw"]), median(w[name]["client"])
                print(
                    f"  {name}: dicomweb-client study retrieval s "
                    + ", ".join(f"{x:.2f}" for x in w[name]["client"])
                    + "; server CPU ms/instance "
                    + f"{median(w[name]['cpu']) * 1000 / args.instances:.3f}",
                    flush=True,
                )
                results.append(
                    [
                        name,
                        f"{args.instances}",
                        f"{median(q[name]):.2f}",
                        f"{args.instances / cli:.0f} ({total / cli / 1e6:.0f} MB/s)",
                        f"{args.instances / raw:.0f} ({total / raw / 1e6:.0f} MB/s)",
                    ]
                )
    print()
    print(
        table(
            [
                "server",
                "instances",
                "QIDO PatientID median ms",
                "WADO-RS study, dicomweb-client inst/s",
                "WADO-RS study, raw bytes inst/s",
            ],
            results,
        )
    )
    big_rows: list[list[str]] = []
    for n in [x for x in (args.rows, args.big) if x]:
        big_bucket = base / f"bucket-{n}"
        bstore = open_store(f"file://{big_bucket}")
        t0 = time.perf_counter()
        synthetic_catalog(bstore, "big", n)
        gen = time.perf_counter() - t0
        work = base / f"hpacs-{n}"
        work.mkdir()
        t0 = time.perf_counter()
        index = SqliteCatalog(work / "catalog.sqlite")
        res = Poller(index, bstore).poll()
        rebuild = time.perf_counter() - t0
        counts = index.counts()
        index.close()
        assert counts["instances"] == n, counts
        srv, url, token_file = hpacs(work, big_bucket)
        with srv:
            token = Path(token_file).read_text().strip()
            pid = f"P{(n // 100) // 2:07d}"
            qms = qido_ms(url, token, pid, args.queries)
        big_rows.append(
            [
                f"{n:,}",
                f"{counts['studies']:,}",
                f"{res.objects}",
                f"{gen:.1f}",
                f"{rebuild:.1f}",
                f"{n / rebuild:,.0f}",
                f"{qms:.2f}",
            ]
        )
        shutil.rmtree(big_bucket, ignore_errors=True)
        print(f"catalog {n:,} rows done", flush=True)
    if big_rows:
        print()
        print(
            table(
                [
                    "catalog rows",
                    "studies",
                    "objects",
                    "write s",
                    "rebuild s",
                    "rows/s",
                    "QIDO PatientID median ms (hpacs)",
                ],
                big_rows,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
