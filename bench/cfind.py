"""C-FIND latency of hpacs-edge at 10k, 100k and 1M instances; Orthanc 1.10 at 20k in the same run.

The edge's index is filled with synthetic rows inserted straight into SQLite (fast): 2 series
per study, 20 instances per series, every instance `evicted` (invariant 3: the rows are what
C-FIND answers from; no files needed). The distribution keeps every query's number of matches
constant as the index grows: 2 studies per PatientID, 20 studies whose name starts with SMITH,
10 studies per StudyDate day (a 3-day range: 30), 20 instances per series. Orthanc receives the
same plan at 20k instances as real files over storescu.

Each query is timed with a persistent pynetdicom association (median, p95 of --reps) and with
one DCMTK `findscu` process per query (median of --proc-reps). Usage:
    .venv/bin/python bench/cfind.py [--sizes 10000,100000,1000000] [--orthanc 20000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common import (  # type: ignore[import-not-found]
    CALLED_AE,
    ENV,
    ROOT,
    Edge,
    Orthanc,
    Receiver,
    cpu_seconds,
    running,
    send,
    table,
)
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as StudyRootFind

from edge import query
from edge.find import row_encoder
from edge.findwire import EXPLICIT_LE
from shared.index import MIGRATIONS, connect, migrate
from shared.synthetic import StudySpec, make_instance

SCU_AE = "FINDSCU"
UID_ROOT = "1.2.826.0.1.3680043.10.1255.8"
SERIES_PER_STUDY = 2
INSTANCES_PER_SERIES = 20
PER_STUDY = SERIES_PER_STUDY * INSTANCES_PER_SERIES
SMITH_PATIENTS = 10  # x 2 studies each = 20 matches for SMITH*
STUDIES_PER_DAY = 10
SURNAMES = ["JONES", "MARTIN", "GARCIA", "MÜLLER", "DUBOIS", "ROSSI", "SMYTHE", "SMIT"]
CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


# ---- the data plan, shared by the SQLite rows and the Orthanc files ------------------------
@dataclass(frozen=True)
class Plan:
    instances: int

    @property
    def studies(self) -> int:
        return self.instances // PER_STUDY

    def patient(self, study: int) -> tuple[str, str]:
        """Two studies per patient; SMITH_PATIENTS patients spread evenly are named SMITH."""
        p = study // 2
        step = max(1, self.studies // 2 // SMITH_PATIENTS)
        if p % step == 0 and p // step < SMITH_PATIENTS:
            return f"PID{p:07d}", f"SMITH^JOHN{p}"
        return f"PID{p:07d}", f"{SURNAMES[p % len(SURNAMES)]}{p:07d}^ANNA"

    def date(self, study: int) -> str:
        day = study // STUDIES_PER_DAY
        t = time.gmtime(1577836800 + day * 86400)  # 2020-01-01
        return time.strftime("%Y%m%d", t)

    def study_uid(self, study: int) -> str:
        return f"{UID_ROOT}.{self.instances}.{study}"

    def series_uid(self, study: int, series: int) -> str:
        return f"{self.study_uid(study)}.{series}"

    def sop_uid(self, study: int, series: int, n: int) -> str:
        return f"{self.series_uid(study, series)}.{n}"

    def queries(self) -> dict[str, dict[str, str]]:
        """The four benchmark identifiers (Study Root), aimed at the middle of the index."""
        mid = self.studies // 2
        pid, _ = self.patient(mid)
        day0 = mid - mid % STUDIES_PER_DAY
        dates = f"{self.date(day0)}-{self.date(day0 + 2 * STUDIES_PER_DAY)}"
        study_keys = {"StudyInstanceUID": "", "PatientName": "", "StudyDate": "", "PatientID": ""}
        return {
            "STUDY PatientID": {"QueryRetrieveLevel": "STUDY", **study_keys, "PatientID": pid},
            "STUDY PatientName SMITH*": {
                "QueryRetrieveLevel": "STUDY",
                **study_keys,
                "PatientName": "SMITH*",
            },
            "STUDY StudyDate range": {
                "QueryRetrieveLevel": "STUDY",
                **study_keys,
                "StudyDate": dates,
            },
            "IMAGE of one series": {
                "QueryRetrieveLevel": "IMAGE",
                "StudyInstanceUID": self.study_uid(mid),
                "SeriesInstanceUID": self.series_uid(mid, 1),
                "SOPInstanceUID": "",
                "InstanceNumber": "",
            },
        }


# ---- building an edge index from rows ----------------------------------------------------
def build_index(plan: Plan, path: Path) -> Path:
    """Rows for plan.instances instances, inserted with executemany; cached by size+schema."""
    if path.exists():
        return path
    tmp = path.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    conn = connect(tmp)
    migrate(conn)
    conn.execute("PRAGMA synchronous=OFF")
    now = time.time()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO studies(id, study_uid, patient_id, patient_name, patient_name_norm, "
        "patient_birth_date, patient_sex, study_date, study_time, accession_number, "
        "study_description, num_series, num_instances, created_at, updated_at, last_access) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            (
                s + 1,
                plan.study_uid(s),
                *(pn := plan.patient(s)),
                pn[1].upper(),
                "19700101",
                "O",
                plan.date(s),
                "120000",
                f"ACC{s:08d}",
                "BENCH STUDY",
                SERIES_PER_STUDY,
                PER_STUDY,
                now,
                now,
                now,
            )
            for s in range(plan.studies)
        ),
    )
    conn.executemany(
        "INSERT INTO series(id, series_uid, study_id, modality, series_number, "
        "series_description, num_instances, created_at) VALUES (?,?,?,?,?,?,?,?)",
        (
            (
                s * SERIES_PER_STUDY + k,
                plan.series_uid(s, k),
                s + 1,
                "CT" if k == 1 else "MR",
                k,
                f"series {k}",
                INSTANCES_PER_SERIES,
                now,
            )
            for s in range(plan.studies)
            for k in range(1, SERIES_PER_STUDY + 1)
        ),
    )
    conn.executemany(
        "INSERT INTO instances(sop_instance_uid, series_id, study_id, sop_class_uid, "
        "instance_number, rows, columns, transfer_syntax, path, size, crc32c, received_at, "
        "source, state, state_changed_at, object_key, last_access) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            (
                plan.sop_uid(s, k, n),
                s * SERIES_PER_STUDY + k,
                s + 1,
                CT if k == 1 else MR,
                n,
                512,
                512,
                EXPLICIT,
                f"bench/{s}/{k}/{n}.dcm",
                524288,
                "00000000",
                now,
                "restore",
                "evicted",
                now,
                f"instances/{plan.sop_uid(s, k, n)}.dcm",
                now,
            )
            for s in range(plan.studies)
            for k in range(1, SERIES_PER_STUDY + 1)
            for n in range(1, INSTANCES_PER_SERIES + 1)
        ),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    tmp.rename(path)
    return path


class FindEdge(Edge):
    """hpacs-edge serving a copy of a prebuilt index in its fresh data directory."""

    def __init__(self, workdir: Path, index: Path) -> None:
        super().__init__(workdir)
        self.index = index

    def prepare(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True)
        # A copy, not a link: the edge writes to its index (nodes, WAL) and must not alter the
        # cached file that the next run starts from.
        shutil.copyfile(self.index, data / "index.sqlite")
        (self.workdir / "hpacs.toml").write_text(
            "[edge]\n"
            f'ae_title = "{CALLED_AE}"\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'data_dir = "{data}"\nmin_free_bytes = 0\nlog_level = "WARNING"\nhttp_port = 0\n'
            "[edge.tls]\nport = 0\n"
            f'[[nodes]]\nae_title = "{SCU_AE}"\nhost = "127.0.0.1"\nport = 104\n'
            'permissions = ["echo", "find"]\n'
        )


class FindOrthanc(Orthanc):
    def prepare(self) -> None:
        super().prepare()
        path = self.workdir / "orthanc.json"
        cfg = json.loads(path.read_text())
        cfg["DicomModalities"][SCU_AE.lower()] = [SCU_AE, "127.0.0.1", 104]
        cfg["SyncStorageArea"] = False  # loading speed only; C-FIND reads the index
        path.write_text(json.dumps(cfg, indent=1))


def orthanc_files(plan: Plan, folder: Path) -> list[Path]:
    """The plan as small Part-10 files (8x8 pixels), cached between runs."""
    done = folder / ".complete"
    if done.exists():
        return sorted(folder.glob("*.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for s in range(plan.studies):
        pid, name = plan.patient(s)
        spec = StudySpec(
            patient_id=pid,
            patient_name=name,
            study_date=plan.date(s),
            study_time="120000",
            accession_number=f"ACC{s:08d}",
            rows=8,
            columns=8,
            specific_character_set="ISO_IR 192",
        )
        for k in range(1, SERIES_PER_STUDY + 1):
            for n in range(1, INSTANCES_PER_SERIES + 1):
                ds = make_instance(spec, plan.study_uid(s), plan.series_uid(s, k), k, n)
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = plan.sop_uid(s, k, n)
                p = folder / f"{s:06d}_{k}_{n:02d}.dcm"
                ds.save_as(p, enforce_file_format=True)
                files.append(p)
    done.touch()
    return files


# ---- measuring ---------------------------------------------------------------------------
def identifier(keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def cpu_ms(pid: int) -> float:
    """User + system CPU time of a process (all its threads) and of its acceptor processes
    (edge.acceptors > 1 serves DIMSE in children), in ms."""
    return cpu_seconds(pid) * 1000


def persistent(
    port: int, queries: dict[str, dict[str, str]], reps: int, pid: int
) -> dict[str, tuple]:
    """(median ms, p95 ms, matches, server CPU ms, client CPU ms per query) per query over
    one association.

    Server CPU time is the number that survives a loaded machine: wall-clock latency on a
    shared 2-core box mostly measures the scheduler. Client CPU (this process: pynetdicom's
    SCU decoding every response with pydicom) shows how much of the wall clock is the client.
    """
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(StudyRootFind)
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED_AE)
    if not assoc.is_established:
        raise RuntimeError(f"association to port {port} failed")
    import socket

    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assoc.dul._run_loop_delay = 0.0001
    out = {}
    try:
        for name, keys in queries.items():
            ds = identifier(keys)
            times, matches = [], 0
            cpu0 = own0 = 0.0
            for i in range(reps + 5):
                if i == 5:
                    cpu0, own0 = cpu_ms(pid), time.process_time()
                t0 = time.perf_counter()
                found = 0
                for status, _ in assoc.send_c_find(ds, StudyRootFind):
                    if status.Status in (0xFF00, 0xFF01):
                        found += 1
                    elif status.Status != 0:
                        raise RuntimeError(f"{name}: status 0x{status.Status:04X}")
                if i >= 5:
                    times.append((time.perf_counter() - t0) * 1000)
                matches = found
            cpu = (cpu_ms(pid) - cpu0) / reps
            own = (time.process_time() - own0) * 1000 / reps
            out[name] = (statistics.median(times), p95(times), matches, cpu, own)
    finally:
        assoc.release()
        ae.shutdown()
    return out


def findscu_args(port: int, keys: dict[str, str], repeat: int = 1) -> list[str]:
    args = ["findscu", "-S", "--repeat", str(repeat), "-aet", SCU_AE, "-aec", CALLED_AE]
    args += ["127.0.0.1", str(port)]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}" if v else k]
    if any(not v.isascii() for v in keys.values()):
        args += ["-k", "SpecificCharacterSet=ISO_IR 192"]
    return args


def timed_findscu(args: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, env=ENV)
    if r.returncode != 0:
        raise RuntimeError(f"findscu failed: {r.stderr[-300:]!r}")
    return (time.perf_counter() - t0) * 1000


def processes(
    port: int, queries: dict[str, dict[str, str]], reps: int, repeat: int = 40
) -> dict[str, tuple[float, float]]:
    """Per query: median ms of one `findscu` process (start, associate, query, release), and
    ms per query on one DCMTK association (`--repeat`: (t(1 + repeat) - t(1)) / repeat)."""
    out = {}
    for name, keys in queries.items():
        single = [timed_findscu(findscu_args(port, keys)) for _ in range(reps)]
        many = [timed_findscu(findscu_args(port, keys, 1 + repeat)) for _ in range(3)]
        per_query = (statistics.median(many) - statistics.median(single)) / repeat
        out[name] = (statistics.median(single), per_query)
    return out


def inprocess(index: Path, queries: dict[str, dict[str, str]], reps: int) -> dict[str, float]:
    """Median ms of the edge's own work per query: build SQL, run it, encode the responses
    (the identifiers as edge/find.py encodes them for explicit VR little endian)."""
    conn = connect(index)
    out = {}
    try:
        for name, keys in queries.items():
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                q = query.build(keys, query.STUDY_ROOT, limit=5001)
                encode = row_encoder(q, [], EXPLICIT_LE)
                for row in conn.execute(q.sql, q.params).fetchall():
                    encode(row)
                times.append((time.perf_counter() - t0) * 1000)
            out[name] = statistics.median(times)
    finally:
        conn.close()
    return out


def p95(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


def measure(
    label: str,
    server: Receiver,
    plan: Plan,
    reps: int,
    proc_reps: int,
    index: Path | None = None,
) -> Iterator[list[str]]:
    queries = plan.queries()
    assert server.proc is not None
    port = server.port
    pers = persistent(port, queries, reps, server.proc.pid)
    procs = processes(port, queries, proc_reps)
    own = inprocess(index, queries, reps) if index else {}
    for name in queries:
        med, q95, matches, cpu, client = pers[name]
        yield [
            label,
            f"{plan.instances:,}",
            name,
            str(matches),
            f"{med:.2f}",
            f"{q95:.2f}",
            f"{cpu:.2f}",
            f"{client:.2f}",
            f"{procs[name][0]:.1f}",
            f"{procs[name][1]:.2f}",
            f"{own[name]:.2f}" if name in own else "-",
        ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument(
        "--instances",
        type=int,
        help="measure at this size and at 1M (the 10M target compares with 1M); overrides --sizes",
    )
    ap.add_argument("--orthanc", type=int, default=20000, help="instances; 0 skips Orthanc")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--proc-reps", type=int, default=15)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/hpacs-bench-cfind"))
    args = ap.parse_args()
    if args.instances:
        args.sizes = ",".join(str(n) for n in sorted({1_000_000, args.instances}))
    args.cache.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    results: dict[int, dict[str, float]] = {}
    for size in [int(s) for s in args.sizes.split(",") if s]:
        plan = Plan(size)
        t0 = time.perf_counter()
        index = build_index(plan, args.cache / f"index-{size}-v{len(MIGRATIONS)}.sqlite")
        print(f"index {size:,} instances ready in {time.perf_counter() - t0:.1f}s", flush=True)
        with running(FindEdge(args.cache / f"edge-{size}", index)) as edge:
            got = list(measure("hpacs-edge", edge, plan, args.reps, args.proc_reps, index))
        rows += got
        results[size] = {r[2]: (float(r[6]), float(r[4]), float(r[9])) for r in got}
        print(table(HEADER, got), flush=True)
    if args.orthanc:
        plan = Plan(args.orthanc)
        t0 = time.perf_counter()
        files = orthanc_files(plan, args.cache / f"orthanc-files-{args.orthanc}")
        print(f"{len(files):,} files for Orthanc in {time.perf_counter() - t0:.1f}s", flush=True)
        with running(FindOrthanc(args.cache / "orthanc")) as orthanc:
            t0 = time.perf_counter()
            send(orthanc.port, files, 4)
            print(
                f"loaded Orthanc in {time.perf_counter() - t0:.1f}s "
                f"({orthanc.stored():,} instances)",
                flush=True,
            )
            got = list(measure("Orthanc 1.10", orthanc, plan, args.reps, args.proc_reps))
        rows += got
        print(table(HEADER, got), flush=True)
    print("\n" + table(HEADER, rows))
    verdict(results)
    return 0


HEADER = [
    "server",
    "instances",
    "query",
    "matches",
    "persistent median ms",
    "persistent p95 ms",
    "server CPU ms/query",
    "pynetdicom client CPU ms/query",
    "findscu process median ms",
    "findscu --repeat ms/query",
    "in-process SQL+encode median ms",
]


def verdict(results: dict[int, dict[str, tuple[float, float, float]]]) -> None:
    """The scale target (issue 13): at the largest size within 1.5x of the smallest size's
    figure. Judged on the edge's CPU per query (what survives a loaded machine) and shown for
    the wall clock of a persistent pynetdicom association (mostly the client decoding) and of
    one DCMTK association (findscu --repeat)."""
    if len(results) < 2:
        return
    small, large = min(results), max(results)
    cols = (("server CPU", 0), ("pynetdicom", 1), ("findscu --repeat", 2))
    for client, col in cols:
        for name, values in results[large].items():
            ms, base = values[col], results[small][name][col]
            ratio = ms / base if base else 1.0
            mark = ("OK" if ratio <= 1.5 else "MISSED") if col == 0 else "(wall clock)"
            print(
                f"target {client} {name}: {large:,} {ms:.2f} ms vs {small:,} {base:.2f} ms "
                f"(x{ratio:.2f}) {mark}"
            )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
