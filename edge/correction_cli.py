"""The correction verbs of `hpacs-edge`: `studies modify`, `studies versions`, `patients merge`.

Kept apart from edge/cli.py so the parser additions live in one place:
- `studies modify UID --set KEY=VALUE ... [--reason TEXT]` corrects one study;
  `studies modify --patient-id ID --set ...` every study of that PatientID (with
  `--set PatientID=NEW`, a merge of ID into NEW);
- `patients merge FROM TO [--reason TEXT]`: every study of PatientID FROM takes the patient
  attributes of TO (PatientID, IssuerOfPatientID, PatientName, PatientBirthDate, PatientSex,
  as TO's most recent study on this edge holds them);
- `studies versions UID [--fetch KEY --out FILE]`: the kept versions of the study's instances
  in the bucket, and one of them downloaded.

Every correction is one audit record per study (who, the attribute names, the reason, the
counts; never values: the values are in the versions themselves).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edge import correctable
from edge.audit import EdgeAudit, cli_actor
from edge.correction_door import correct, store_factory
from edge.versions import fetch_version, study_versions
from shared.config import Config
from shared.errors import Conflict, NotFound
from shared.index import Database


def add_parsers(
    studies: argparse._SubParsersAction[argparse.ArgumentParser],
    top: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    m = studies.add_parser(
        "modify", help="correct patient/study attributes (the instances are rewritten)"
    )
    m.add_argument("study_uid", nargs="?", help="the study to correct")
    m.add_argument("--patient-id", help="correct every study of this PatientID instead")
    m.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"repeatable; KEY among {', '.join(correctable.CORRECTABLE)}",
    )
    m.add_argument("--reason", default="", help="recorded in the audit trail")
    v = studies.add_parser("versions", help="the kept versions of a study's instances")
    v.add_argument("study_uid")
    v.add_argument("--fetch", metavar="KEY", help="download this version (a key listed)")
    v.add_argument("--out", type=Path, help="where --fetch writes the object")
    patients = top.add_parser("patients", help="patient identities").add_subparsers(
        dest="patients_command", required=True
    )
    pm = patients.add_parser(
        "merge", help="give every study of one PatientID the identity of another"
    )
    pm.add_argument("from_id", metavar="FROM", help="the PatientID whose studies are corrected")
    pm.add_argument("to_id", metavar="TO", help="the PatientID they are merged into")
    pm.add_argument("--reason", default="", help="recorded in the audit trail")


def command(cfg: Config, db: Database, args: argparse.Namespace) -> int | None:
    """Run a correction verb; None when `args` names none of them."""
    if args.command == "patients" and args.patients_command == "merge":
        changes = merge_changes(db, args.from_id, args.to_id)
        return _run(cfg, db, changes, args.reason, patient_id=args.from_id, action="patient-merge")
    if args.command != "studies":
        return None
    if args.studies_command == "modify":
        if bool(args.study_uid) == bool(args.patient_id):
            print("hpacs-edge: give a study UID or --patient-id, not both", file=sys.stderr)
            return 2
        changes = correctable.parse_sets(args.sets)
        return _run(
            cfg, db, changes, args.reason, study_uid=args.study_uid or "",
            patient_id=args.patient_id or "",
        )  # fmt: skip
    if args.studies_command == "versions":
        return versions(cfg, db, args)
    return None


def _run(cfg: Config, db: Database, changes: dict[str, str], reason: str, **kw: str) -> int:
    audit = EdgeAudit(cfg)
    try:
        rep = correct(cfg, db, changes, reason, actor=cli_actor(), audit=audit, **kw)
    finally:
        audit.close()
    print(f"corrected {', '.join(sorted(changes))}: {rep.summary()}")
    for uid in rep.study_uids:
        print(f"  {uid}")
    if rep.lost:
        print(f"lost instances (no bytes anywhere, not corrected): {' '.join(rep.lost[:20])}")
    return 0


def merge_changes(db: Database, from_id: str, to_id: str) -> dict[str, str]:
    """The patient attributes of TO's most recent study, for every study of FROM."""
    if from_id == to_id:
        raise Conflict("FROM and TO are the same PatientID")
    cols = {k: correctable.CORRECTABLE[k].column for k in correctable.PATIENT_KEYWORDS}
    row = (
        db.reader()
        .execute(
            f"SELECT {', '.join(cols.values())} FROM studies WHERE patient_id = ? "
            "ORDER BY study_date DESC, created_at DESC LIMIT 1",
            (to_id,),
        )
        .fetchone()
    )
    if row is None:
        raise NotFound(
            "no study of the TO PatientID on this edge: use `studies modify --patient-id FROM "
            "--set PatientID=... --set PatientName=...` to give the identity explicitly"
        )
    return {k: correctable.check_value(k, row[c] or "") for k, c in cols.items()}


def versions(cfg: Config, db: Database, args: argparse.Namespace) -> int:
    store = store_factory(cfg)
    if store is None:
        raise Conflict("no object store is configured (sync.store_url): no versions are kept")
    if args.fetch:
        if args.out is None:
            print("hpacs-edge: --fetch needs --out FILE", file=sys.stderr)
            return 2
        n = fetch_version(store, args.study_uid, args.fetch, args.out)
        print(f"wrote {args.out} ({n} bytes)")
        return 0
    rows = study_versions(db, store, args.study_uid)
    if not rows:
        raise NotFound(f"no instance object of study {args.study_uid} in the bucket")
    print(f"{'SOP INSTANCE UID':64} {'VERSION':9} {'SIZE':>10} {'STORED':16} KEY")
    for v in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(v.updated)) if v.updated else "-"
        label = ("current" if v.current else "kept") + ("" if v.revision else "*")
        print(f"{v.sop_instance_uid:64} {label:9} {v.size:>10} {when:16} {v.key}")
    print("* the bytes as first received; fetch one with --fetch KEY --out FILE")
    return 0
