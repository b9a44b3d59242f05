"""`hpacs-sync`: run the agent, show its status, pin studies, restore an index from the bucket."""

from __future__ import annotations

import argparse
import logging
import sys

from shared.cli import entry_parser, load_entry_config
from shared.config import Config
from shared.errors import PacsError
from shared.index import Database
from shared.lifecycle import State, transition
from shared.logs import setup_logging
from shared.signals import call_on_signals
from shared.uids import is_valid_uid
from sync.agent import Agent, AlreadyRunning, store_for
from sync.catalog import pending_count
from sync.evictor import Watermarks, measure_usage
from sync.lost import retry_lost
from sync.restore import restore_index
from sync.status import collect

log = logging.getLogger("hpacs.sync")


def build_parser() -> argparse.ArgumentParser:
    p, sub = entry_parser("hpacs-sync", "hpacs sync agent")
    sub.add_parser("run", help="upload, journal and evict in the foreground")
    sub.add_parser("status", help="backlog, failures and cache usage")
    for verb in ("pin", "unpin"):
        sp = sub.add_parser(verb, help=f"{verb} a study (pinned studies are never evicted)")
        sp.add_argument("study_uid")
    sub.add_parser("retry-failed", help="give failed and conflict instances another upload")
    sub.add_parser(
        "retry-lost",
        help="recall lost instances again (after their objects were put back in the bucket)",
    )
    rs = sub.add_parser("restore", help="rebuild the index from a site's catalog journal")
    rs.add_argument("--site", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_entry_config(
        "hpacs-sync", args.config, validate=lambda c: Watermarks.from_config(c.sync)
    )
    if cfg is None:
        return 2
    setup_logging(cfg.edge.log_level, "sync")
    db = Database(cfg.edge.index_path)
    try:
        if args.command == "run":
            return run(cfg, db)
        if args.command == "status":
            marks = Watermarks.from_config(cfg.sync)
            cache_dir = cfg.edge.cache_dir
            cache_dir.mkdir(parents=True, exist_ok=True)
            usage = measure_usage(db, cache_dir, marks)
            rate = cfg.sync.scrub_bytes_per_s
            st = collect(db, usage, pending_count(db), scrub_bytes_per_s=rate)
            print("\n".join(st.lines()))
            return 0
        if args.command in ("pin", "unpin"):
            return pin(db, args.study_uid, args.command == "pin")
        if args.command == "retry-failed":
            with db.write() as conn:
                n = 0
                for r in conn.execute(
                    "SELECT id, state FROM instances WHERE state IN (?, ?)",
                    (State.FAILED.value, State.CONFLICT.value),
                ).fetchall():
                    n += transition(
                        conn,
                        r["id"],
                        State(r["state"]),
                        State.CACHED,
                        attempts=0,
                        next_attempt_at=0,
                    )
            print(f"{n} instances queued for upload again")
            return 0
        if args.command == "retry-lost":
            got = retry_lost(db, cfg.edge.cache_dir, store_for(cfg))
            print(
                f"{got.recalled} lost instances recalled, {got.still_lost} still lost, "
                f"{got.never_uploaded} never uploaded (send those again from the modality)"
            )
            return 0 if not got.still_lost else 1
        if args.command == "restore":
            rep = restore_index(db, store_for(cfg), args.site)
            print(
                f"restored {rep.indexed} instances from {rep.objects} catalog objects "
                f"({rep.already} already in the index; {rep.deleted} deleted, undeletable "
                "until purged)"
            )
            return 0
    except PacsError as exc:
        print(f"hpacs-sync: {exc}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return 2


def run(cfg: Config, db: Database) -> int:
    agent = Agent(cfg, db)

    call_on_signals(lambda _signum: agent.stop())  # Event.set() in a handler can deadlock
    try:
        agent.run()
    except AlreadyRunning as exc:
        print(f"hpacs-sync: {exc}", file=sys.stderr)
        return 1
    finally:
        agent.close()
    return 0


def pin(db: Database, study_uid: str, pinned: bool) -> int:
    if not is_valid_uid(study_uid):
        print(f"hpacs-sync: not a valid Study Instance UID: {study_uid[:80]!r}", file=sys.stderr)
        return 2
    with db.write() as conn:
        n = conn.execute(
            "UPDATE studies SET pinned = ? WHERE study_uid = ?", (int(pinned), study_uid)
        ).rowcount
    if not n:
        print(f"hpacs-sync: no study {study_uid} in the index", file=sys.stderr)
        return 1
    print(f"{'pinned' if pinned else 'unpinned'} {study_uid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
