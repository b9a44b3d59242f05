"""`hpacs-edge studies delete|undelete|hold|release|holds` and `hpacs-edge retention report`.

Each verb is one call of edge/studies.py (the shared deletion path plus its audit event). A
refusal (retention, a legal hold, nothing to delete) raises a `PacsError`, which `main` prints
as one line and turns into exit status 1. The CLI runs as an admin (whoever may read the
config file and the index): `--override` lifts retention when given with `--reason`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

from edge.audit import EdgeAudit, cli_actor
from edge.studies import Caller, Studies
from shared.config import Config
from shared.deletion import Target, list_holds
from shared.errors import BadRequest
from shared.expiry import report
from shared.index import Database


def add_parsers(sub: Any) -> Any:
    """The `studies` verbs (bare `studies` still lists) and `retention`; returns the `studies`
    verbs, to which the correction verbs are added (edge/correction_cli.py)."""
    st = sub.add_parser("studies", help="list, delete, undelete and hold studies")
    verbs = st.add_subparsers(dest="studies_command")
    verbs.add_parser("list", help="list the studies in the index (the default)")
    for name, text in (
        ("delete", "hide a study, series or instance at once; purged after the grace"),
        ("undelete", "bring back a deletion within retention.delete_grace_days"),
    ):
        p = verbs.add_parser(name, help=text)
        p.add_argument("study_uid")
        p.add_argument("--series", default="", help="only this series of the study")
        p.add_argument("--instance", default="", help="only this SOP Instance UID")
        p.add_argument("--reason", default="", help="recorded in the audit trail")
        if name == "delete":
            p.add_argument(
                "--override", action="store_true", help="lift retention (needs --reason)"
            )
    for name, text in (
        ("hold", "place a legal hold: blocks every deletion, purge and override"),
        ("release", "release the legal holds on a study or a patient"),
    ):
        p = verbs.add_parser(name, help=text)
        p.add_argument("study_uid", nargs="?", default="")
        p.add_argument("--patient", default="", help="a PatientID instead of a study")
        p.add_argument("--reason", default="", required=name == "hold")
    verbs.add_parser("holds", help="the legal holds in force")
    ret = sub.add_parser("retention", help="retention rules applied to the index")
    rv = ret.add_subparsers(dest="retention_command", required=True)
    rv.add_parser("report", help="what expires when, soonest first")
    return verbs


def studies_verb(cfg: Config, db: Database, args: argparse.Namespace) -> int | None:
    """Run a `studies` verb; None for the bare listing (the caller's)."""
    cmd = args.studies_command
    if cmd in (None, "list"):
        return None
    if cmd == "holds":
        return _holds(db)
    audit = EdgeAudit(cfg)
    try:
        studies, who = Studies(cfg, db, audit), Caller(cli_actor())
        if cmd in ("delete", "undelete"):
            target = Target(args.study_uid, args.series, args.instance)
            if cmd == "delete":
                if args.override and not args.reason.strip():
                    raise BadRequest("--override needs --reason")
                out = studies.delete(who, target, args.reason, args.override)
                print(out.summary("deleted"))
                if out.override:
                    print(f"overridden: {out.override.removeprefix('override of retention: ')}")
                print(
                    f"kept in the bucket for {cfg.retention.delete_grace_days:g} days: "
                    f"`hpacs-edge studies undelete {target.study_uid}` brings it back"
                )
            else:
                print(studies.undelete(who, target, args.reason).summary("undeleted"))
            return 0
        kind, value = _hold_target(args)
        if cmd == "hold":
            hold = studies.hold(who, kind, value, args.reason)
            print(f"hold {hold.id} placed on {kind} {value}")
        else:
            ids = [h.id for h in studies.release(who, kind, value, args.reason)]
            print(f"released hold(s) {', '.join(map(str, ids))} on {kind} {value}")
        return 0
    finally:
        audit.close()


def _hold_target(args: argparse.Namespace) -> tuple[str, str]:
    if bool(args.study_uid) == bool(args.patient):
        raise BadRequest("give a study UID or --patient PATIENT_ID (one of them)")
    return ("patient", args.patient) if args.patient else ("study", args.study_uid)


def _holds(db: Database) -> int:
    print(f"{'ID':>4} {'ON':8} {'VALUE':64} {'PLACED':16} {'BY':16} REASON")
    for h in list_holds(db.reader()):
        placed = time.strftime("%Y-%m-%d %H:%M", time.localtime(h.placed_at))
        print(f"{h.id:>4} {h.kind:8} {h.value:64} {placed:16} {h.placed_by:16} {h.reason}")
    return 0


def retention_report(cfg: Config, db: Database) -> int:
    """Every study with its retention: soonest expiry first, held and rule-less ones marked."""
    today = dt.datetime.now(dt.UTC).date()
    lines = report(db.reader(), cfg.retention)
    print(f"{'STUDY INSTANCE UID':64} {'DATE':8} {'MOD':7} {'UNTIL':10} {'STATUS':8} RULE")
    counts: dict[str, int] = {}
    for x in lines:
        status = x.status(today)
        counts[status] = counts.get(status, 0) + 1
        rule = f"{x.retention.rule} ({x.retention.why})" if x.retention.rule else "-"
        print(
            f"{x.study_uid:64} {x.study_date or '-':8} {x.modalities or '-':7} "
            f"{x.until():10} {status:8} {rule}"
        )
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no studies"
    auto = "on" if cfg.retention.auto_purge else "off"
    dry = " (dry run)" if cfg.retention.auto_purge_dry_run else ""
    print(f"{summary}; auto_purge {auto}{dry}")
    return 0
