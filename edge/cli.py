"""`hpacs-edge`: serve the DIMSE node and administer its registry and index."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
import threading
import time
from typing import NoReturn

from edge import correction_cli, lifecycle_cli
from edge.acceptors import Acceptors
from edge.audit import EdgeAudit, cli_actor
from edge.cache import Cache
from edge.forwarder import Forwarder, Sender, attach_routing, dimse_sender
from edge.hotfolder import HotFolder
from edge.http import start_http
from edge.importer import run_import
from edge.ingest import Ingestor
from edge.reconcile import reconcile
from edge.routequeue import retry, routes_report
from edge.routestore import check_config_routes, removal_blockers, stored_routes
from edge.runtime import configure
from edge.scu import client_ssl_context, echo, node_ssl_context
from edge.server import EdgeServer
from edge.users import ROLES, add_user, list_users, remove_user, set_password
from shared.cli import entry_parser, load_entry_config
from shared.config import PERMISSIONS, Config, ConfigError
from shared.errors import PacsError
from shared.index import Database
from shared.logs import setup_logging
from shared.registry import (
    CONFIG,
    REGISTRY,
    Node,
    apply_config_nodes,
    get_node,
    list_nodes,
    remove_node,
    upsert_node,
)
from shared.signals import call_on_signals

log = logging.getLogger("hpacs.edge")


def build_parser() -> argparse.ArgumentParser:
    p, sub = entry_parser("hpacs-edge", "hpacs edge node")
    sub.add_parser("serve", help="run the DICOM node in the foreground")
    nodes = sub.add_parser("nodes", help="the node registry").add_subparsers(
        dest="nodes_command", required=True
    )
    add = nodes.add_parser("add", help="register or update a node")
    add.add_argument("ae_title")
    add.add_argument("host", help="IP or host name the node connects from / listens on; * any")
    add.add_argument("port", type=int)
    add.add_argument(
        "--permissions",
        default="echo,store,find,move,get",
        help=f"comma-separated among {','.join(PERMISSIONS)}",
    )
    add.add_argument("--tls", action="store_true", help="connect to this node over TLS")
    add.add_argument("--max-associations", type=int, default=0)
    nodes.add_parser("list", help="list registered nodes")
    rm = nodes.add_parser("remove", help="remove a node")
    rm.add_argument("ae_title")
    for p_ in (add, rm):
        p_.add_argument("--reason", default="", help="recorded in the audit trail")
    ec = nodes.add_parser("echo", help="C-ECHO a registered node")
    ec.add_argument("ae_title")
    ec.add_argument("--timeout", type=float, default=10.0)
    users = sub.add_parser("users", help="console accounts of this edge").add_subparsers(
        dest="users_command", required=True
    )
    ua = users.add_parser("add", help="add a user; the password is read from stdin")
    ua.add_argument("name")
    ua.add_argument("--role", required=True, choices=ROLES)
    users.add_parser("list", help="list users and their roles")
    ur = users.add_parser("remove", help="remove a user (ends their sessions)")
    ur.add_argument("name")
    up = users.add_parser("passwd", help="set a new password, read from stdin (ends sessions)")
    up.add_argument("name")
    for p_ in (ua, ur, up):
        p_.add_argument("--reason", default="", help="recorded in the audit trail")
    studies_sub = lifecycle_cli.add_parsers(sub)  # studies list|delete|undelete|hold..., retention
    correction_cli.add_parsers(studies_sub, sub)  # studies modify|versions, patients merge
    imp = sub.add_parser("import", help="import files and folders (recursive) into the index")
    imp.add_argument("paths", nargs="+", metavar="PATH")
    imp.add_argument("--dry-run", action="store_true", help="parse and compare, store nothing")
    routes = sub.add_parser("routes", help="routing rules and the forward queue").add_subparsers(
        dest="routes_command", required=True
    )
    routes.add_parser("list", help="rules, queue counts and the dead letter")
    rt = routes.add_parser("retry", help="requeue dead-lettered forwards")
    rt.add_argument("ids", nargs="*", type=int, help="job ids (default: all dead jobs)")
    rt.add_argument("--route", default="")
    rt.add_argument("--destination", default="")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_entry_config("hpacs-edge", args.config)
    if cfg is None:
        return 2
    setup_logging(cfg.edge.log_level, "edge")
    configure()
    try:
        if args.command == "serve":
            _exit_now(serve(cfg))
        db = Database(cfg.edge.index_path)
        try:
            if args.command == "nodes":
                # [[nodes]] are the registry's base: `nodes list` shows them before any serve
                with db.write() as conn:
                    apply_config_nodes(conn, cfg.nodes)
                return nodes_command(cfg, db, args)
            if args.command == "users":
                return users_command(cfg, db, args)
            done = correction_cli.command(cfg, db, args)
            if done is not None:
                return done
            if args.command == "studies":
                done = lifecycle_cli.studies_verb(cfg, db, args)
                return studies_command(db) if done is None else done
            if args.command == "retention":
                return lifecycle_cli.retention_report(cfg, db)
            if args.command == "import":
                return import_command(cfg, db, args)
            if args.command == "routes":
                return routes_command(cfg, db, args)
        finally:
            db.close()
    except PacsError as exc:
        print(f"hpacs-edge: {exc}", file=sys.stderr)
        return 1
    return 2


def _exit_now(status: int) -> NoReturn:
    """End `serve` once it has stopped cleanly, without the interpreter's teardown.

    Listeners, associations, forwarder, hot folder, HTTP and the index are closed by then;
    what remains is freeing every imported module, which took 0.6-4 s on a loaded machine
    (most of a SIGTERM's stop time, against `make up`'s and systemd's kill deadlines)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def serve(cfg: Config, ready: threading.Event | None = None) -> int:
    db = Database(cfg.edge.index_path)
    try:
        with db.write() as conn:
            apply_config_nodes(conn, cfg.nodes)
            check_config_routes(conn, cfg.routes)  # destinations: [[nodes]] or the registry
    except ConfigError as exc:
        db.close()
        print(f"hpacs-edge: {exc}", file=sys.stderr)
        return 2
    server = EdgeServer(cfg, db)
    reconcile(db, server.cache)
    attach_routing(server.ingestor, cfg.routes)
    forwarder = Forwarder(db, cfg, _sender(cfg, db, server))
    hotfolder = _hotfolder(cfg, server.ingestor)
    stop = threading.Event()

    def _stop(signum: int) -> None:
        if not stop.is_set():
            log.info("stopping on signal %s", signal.Signals(signum).name)
        stop.set()

    call_on_signals(_stop)  # not in the handler itself: Event.set() there can deadlock
    forwarder.start()
    if hotfolder is not None:
        hotfolder.start()
    # DIMSE once everything a stored instance needs runs; HTTP last, so that once /healthz
    # answers every part of the node is up. edge.acceptors > 1: child processes serve DIMSE on
    # the port (edge/acceptors.py); this process keeps reconcile (done above, before any child
    # starts), HTTP, hot folder, forwarder and the commitment report queue.
    count = cfg.edge.acceptor_count
    acceptors = Acceptors(cfg, count) if count > 1 else None
    if acceptors is not None:
        acceptors.start()
        server.start_retrier()
    else:
        server.start()
    http = start_http(
        cfg, db, server.active_associations, ingestor=server.ingestor, recaller=server.recaller
    )
    ports = server.ports or [p for p in (cfg.edge.port, cfg.edge.tls.port) if p]
    log.info(
        "edge node ready ae_title=%s ports=%s acceptors=%d",
        cfg.edge.ae_title,
        ports,
        count,
    )
    if ready is not None:
        ready.set()
    try:
        while not stop.wait(1.0):
            if acceptors is not None:
                acceptors.check()
    finally:
        if http is not None:
            http.stop()
        if hotfolder is not None:
            hotfolder.stop()
        if acceptors is not None:
            acceptors.stop()
        server.stop()
        forwarder.stop()
        db.close()
        log.info("edge node stopped")
    return 0


def _sender(cfg: Config, db: Database, server: EdgeServer) -> Sender:
    t = cfg.edge.tls
    # Destinations with tls = true are reached over TLS even when we present no certificate.
    ctx = client_ssl_context(t.ca_file, t.cert_file, t.key_file)
    return dimse_sender(
        cfg.edge.ae_title,
        db,
        server.cache,
        recaller=server.recaller,
        ssl_context=ctx,
        timeout_s=cfg.edge.network_timeout_s,
    )


def _hotfolder(cfg: Config, ingestor: Ingestor) -> HotFolder | None:
    if not cfg.edge.import_dir:
        return None
    return HotFolder(
        cfg.edge.import_dir,
        ingestor,
        settle_s=cfg.edge.import_settle_s,
        rescan_s=cfg.edge.import_rescan_s,
    )


def nodes_command(cfg: Config, db: Database, args: argparse.Namespace) -> int:
    cmd = args.nodes_command
    if cmd == "add":
        perms = frozenset(p.strip() for p in args.permissions.split(",") if p.strip())
        node = Node(
            args.ae_title,
            args.host,
            args.port,
            tls=args.tls,
            permissions=perms,
            max_associations=args.max_associations,
            source=REGISTRY,
            added_by="cli",
        )
        with db.write() as conn:
            upsert_node(conn, node)
        _audit(cfg, "node-add", node.ae_title, args.reason)
        print(f"registered {node.ae_title} {node.host}:{node.port} {','.join(sorted(perms))}")
        return 0
    if cmd == "list":
        print(nodes_report(list_nodes(db.reader())))
        return 0
    if cmd == "remove":
        with db.write() as conn:
            used = removal_blockers(conn, cfg.routes, args.ae_title, REGISTRY)
            removed = not used and remove_node(conn, args.ae_title, REGISTRY)
        if used:
            print(f"hpacs-edge: {args.ae_title} is a destination of {used}", file=sys.stderr)
            return 1
        if not removed:
            if get_node(db.reader(), args.ae_title, CONFIG) is not None:
                print(
                    f"hpacs-edge: {args.ae_title} comes from [[nodes]] in {cfg.source_path}: "
                    "remove it there (it would come back at the next start)",
                    file=sys.stderr,
                )
            else:
                print(f"hpacs-edge: no node {args.ae_title!r}", file=sys.stderr)
            return 1
        _audit(cfg, "node-remove", args.ae_title, args.reason)
        print(f"removed {args.ae_title}")
        return 0
    if cmd == "echo":
        target = get_node(db.reader(), args.ae_title)
        if target is None:
            print(f"hpacs-edge: no node {args.ae_title!r}", file=sys.stderr)
            return 1
        ctx = node_ssl_context(cfg.edge.tls, target)
        res = echo(cfg.edge.ae_title, target, ssl_context=ctx, timeout_s=args.timeout)
        status = f"0x{res.status:04X}" if res.status is not None else "-"
        print(
            f"{target.ae_title} {target.host}:{target.port} {res.detail} status={status} "
            f"rtt_ms={res.rtt_ms:.1f}"
        )
        return 0 if res.ok else 1
    return 2


def nodes_report(rows: list[Node]) -> str:
    """Both sources; a registry row under a config row of the same AE title is `shadowed`."""
    lines = [f"{'AE TITLE':16} {'HOST':20} {'PORT':>5} {'TLS':3} {'MAX':>3} {'SOURCE':8} PERMS"]
    configured = {n.ae_title for n in rows if n.source == CONFIG}
    for n in rows:
        source = "shadowed" if n.source == REGISTRY and n.ae_title in configured else n.source
        lines.append(
            f"{n.ae_title:16} {n.host:20} {n.port:>5} {'yes' if n.tls else 'no':3} "
            f"{n.max_associations:>3} {source:8} {','.join(sorted(n.permissions))}"
        )
    if any(n.source == REGISTRY and n.ae_title in configured for n in rows):
        lines.append("shadowed: a [[nodes]] entry of the same AE title is in force")
    return "\n".join(lines)


def _audit(cfg: Config, action: str, target: str, reason: str) -> None:
    audit = EdgeAudit(cfg)
    try:
        audit.record(action=action, actor=cli_actor(), target=target, reason=reason)
    finally:
        audit.close()


def users_command(cfg: Config, db: Database, args: argparse.Namespace) -> int:
    cmd = args.users_command
    if cmd == "list":
        print(f"{'USER':24} {'ROLE':10} CREATED")
        for u in list_users(db.reader()):
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(u.created_at))
            print(f"{u.name:24} {u.role:10} {created}")
        return 0
    if cmd == "remove":
        with db.write() as conn:
            remove_user(conn, args.name)
        _audit(cfg, "user-remove", args.name, args.reason)
        print(f"removed {args.name}")
        return 0
    password = _read_password()
    with db.write() as conn:
        if cmd == "add":
            add_user(conn, args.name, args.role, password)
        else:
            set_password(conn, args.name, password)
    _audit(cfg, "user-add" if cmd == "add" else "user-passwd", args.name, args.reason)
    print(f"{'added' if cmd == 'add' else 'password set for'} {args.name}")
    return 0


def _read_password() -> str:
    """The password from stdin: the first line (a terminal prompts without echo)."""
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    return sys.stdin.readline().rstrip("\r\n")


def studies_command(db: Database) -> int:
    rows = db.reader().execute(
        "SELECT s.study_uid, s.study_date, s.num_instances, "
        "(SELECT group_concat(DISTINCT modality) FROM series WHERE study_id = s.id) AS mods, "
        "(SELECT group_concat(DISTINCT state) FROM instances WHERE study_id = s.id) AS states "
        "FROM studies s ORDER BY s.created_at DESC"  # deleted ones too: their state says so
    )
    print(f"{'STUDY INSTANCE UID':64} {'DATE':8} {'MODALITY':8} {'COUNT':>6} STATE")
    for r in rows:
        print(
            f"{r['study_uid']:64} {r['study_date'] or '-':8} {r['mods'] or '-':8} "
            f"{r['num_instances']:>6} {r['states'] or '-'}"
        )
    return 0


def import_command(cfg: Config, db: Database, args: argparse.Namespace) -> int:
    cache = Cache(cfg.edge.cache_dir)
    ingestor = Ingestor(
        db,
        cache,
        duplicates=cfg.edge.duplicates,
        min_free_bytes=cfg.edge.min_free_bytes,
        max_object_bytes=cfg.edge.max_object_bytes,
    )
    attach_routing(ingestor, cfg.routes)  # a running `serve` forwards what this queues
    result = run_import(args.paths, ingestor, dry_run=args.dry_run)
    print(result.render(args.dry_run))
    return 0 if result.ok else 1


def routes_command(cfg: Config, db: Database, args: argparse.Namespace) -> int:
    if args.routes_command == "retry":
        with db.write() as conn:
            n = retry(conn, ids=args.ids or None, route=args.route, destination=args.destination)
        print(f"requeued {n} dead forward job(s)")
        return 0
    conn = db.reader()
    print(routes_report(cfg.routes + [r for r, _, _ in stored_routes(conn)], conn))
    return 0


if __name__ == "__main__":
    sys.exit(main())
