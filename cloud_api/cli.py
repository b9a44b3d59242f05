"""`hpacs-cloud`: serve the DICOMweb/admin API, manage tokens and share links, rebuild the
catalog, verify the audit trail."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from cloud_api.app import create_app, ssl_context
from cloud_api.audit import audit_key, verify_dir
from cloud_api.auth import ROLES, TokenStore
from cloud_api.catalog import open_catalog
from cloud_api.catalog.poller import Poller
from cloud_api.runner import make_runner
from cloud_api.shares import ShareStore, link_path
from shared.cli import entry_parser, load_entry_config
from shared.config import Config, ConfigError
from shared.errors import PacsError, Unauthenticated
from shared.fsutil import write_atomic
from shared.logs import setup_logging
from shared.store.base import open_store
from shared.uids import is_valid_uid

log = logging.getLogger("hpacs.cloud")

DEV_TOKEN_NAME = "dev-admin"


def build_parser() -> argparse.ArgumentParser:
    p, sub = entry_parser("hpacs-cloud", "hpacs cloud API")
    s = sub.add_parser("serve", help="run the API in the foreground")
    s.add_argument("--port", type=int, help="listen on this port instead of cloud.port")
    s.add_argument("--catalog", help="the catalog URL instead of cloud.catalog (postgresql://...)")
    cat = sub.add_parser("catalog", help="the query catalog").add_subparsers(
        dest="catalog_command", required=True
    )
    cat.add_parser("rebuild", help="empty the catalog and apply every catalog/<site>/ object again")
    tok = sub.add_parser("token", help="bearer tokens").add_subparsers(
        dest="token_command", required=True
    )
    c = tok.add_parser("create", help="create a token (printed once, stored hashed)")
    c.add_argument("--role", required=True, choices=ROLES)
    c.add_argument("--sites", default="", help="comma-separated sites; * for all")
    c.add_argument("--name", required=True)
    tok.add_parser("list", help="list tokens (never their values)")
    r = tok.add_parser("revoke", help="revoke a token by name")
    r.add_argument("name")
    _share_parser(sub)
    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    v = audit.add_parser(
        "verify", help="check the audit chain with its key and the checkpoints in the bucket"
    )
    v.add_argument("--dir", help="a replica's data directory (default: cloud.data_dir)")
    v.add_argument(
        "--bucket",
        action="store_true",
        help="also compare every record with the copies shipped to the bucket",
    )
    v.add_argument("--replica", help="the replica id (default: <dir>/replica_id)")
    return p


def _share_parser(sub: Any) -> None:
    sh = sub.add_parser("share", help="share links to one study").add_subparsers(
        dest="share_command", required=True
    )
    c = sh.add_parser("create", help="a time-limited link to one study (printed once)")
    c.add_argument("study_uid")
    c.add_argument("--hours", type=float, default=72.0, help="valid for this long (default 72)")
    c.add_argument("--by", default="", help="who asked for it (default: cli:<user>)")
    c.add_argument("--base-url", default="", help="the API's public URL (default from [cloud])")
    ls = sh.add_parser("list", help="share links (never their secrets)")
    ls.add_argument("--all", action="store_true", help="also expired and revoked links")
    r = sh.add_parser("revoke", help="revoke a link by its id")
    r.add_argument("share_id")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_entry_config("hpacs-cloud", args.config, missing_ok=True)
    if cfg is None:
        return 2
    setup_logging(cfg.cloud.log_level, service="cloud")
    try:
        if args.command == "serve":
            overrides = {"port": args.port, "catalog": args.catalog}
            cloud = replace(cfg.cloud, **{k: v for k, v in overrides.items() if v is not None})
            return serve(replace(cfg, cloud=cloud))
        if args.command == "catalog":
            return rebuild_command(cfg)
        if args.command == "token":
            return token_command(cfg, args)
        if args.command == "share":
            return share_command(cfg, args)
        return audit_command(cfg, args)
    except PacsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # found after loading: e.g. an audit key file others may read
        print(f"hpacs-cloud: config error: {exc}", file=sys.stderr)
        return 2


def token_command(cfg: Config, args: argparse.Namespace) -> int:
    tokens = TokenStore(cfg.cloud.tokens_file)
    if args.token_command == "create":
        sites = [s.strip() for s in args.sites.split(",") if s.strip()]
        if args.role != "admin" and not sites:
            print("error: --sites is required for reader and agent tokens", file=sys.stderr)
            return 2
        print(tokens.create(args.name, args.role, sites))
        print("store it now: it is not shown again", file=sys.stderr)
    elif args.token_command == "list":
        for r in tokens.list():
            state = "revoked" if r.revoked_at else "active"
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.created_at))
            print(f"{r.name}\t{r.role}\t{','.join(r.sites) or '-'}\t{state}\t{created}")
    else:
        tokens.revoke(args.name)
        print(f"revoked {args.name}")
    return 0


def rebuild_command(cfg: Config) -> int:
    """Re-derive the catalog from the bucket. On PostgreSQL with replicas running, the replica
    that holds the lead re-applies everything at its next poll if this command cannot lead."""
    store = open_store(cfg.cloud.store_url, emulator_host=cfg.sync.emulator_host)
    catalog = open_catalog(cfg.cloud.catalog, cfg.cloud.data_dir)
    try:
        catalog.reset()
        res = Poller(catalog, store).poll()
        if not res.applied:
            print("catalog emptied; the replica applying journal objects rebuilds it now")
            return 0
        counts = catalog.counts()
    finally:
        catalog.close()
    print(
        f"catalog rebuilt: {res.objects} objects, {res.rows} rows, {counts['studies']} studies,"
        f" {counts['instances']} instances in {res.seconds:.1f} s"
    )
    return 0


def _base_url(cfg: Config) -> str:
    host = "127.0.0.1" if cfg.cloud.host in ("0.0.0.0", "::", "") else cfg.cloud.host
    scheme = "https" if cfg.cloud.tls_cert_file else "http"
    return f"{scheme}://{host}:{cfg.cloud.port}"


def share_command(cfg: Config, args: argparse.Namespace) -> int:
    """Share links straight in the bucket, as the API keeps them (an admin's act: all sites).
    The CLI has no audit log of its own; the record says who made or revoked the link, and
    every opening of it is audited by the API."""
    store = open_store(cfg.cloud.store_url, emulator_host=cfg.sync.emulator_host)
    shares = ShareStore(store)
    if args.share_command == "create":
        if not is_valid_uid(args.study_uid):
            print(f"error: not a valid Study Instance UID: {args.study_uid!r}", file=sys.stderr)
            return 2
        if next(iter(store.list(f"instances/{args.study_uid}/")), None) is None:
            print(f"error: no instance of study {args.study_uid} in the bucket", file=sys.stderr)
            return 1
        by = args.by or f"cli:{getpass.getuser()}"
        rec, token = shares.create(args.study_uid, ["*"], by, args.hours)
        url = (args.base_url or _base_url(cfg)).rstrip("/") + link_path(token)
        print(f"{rec.id}\texpires {_when(rec.expires_at)}\t{url}")
        print("the link is shown once: send it now", file=sys.stderr)
    elif args.share_command == "list":
        for rec in shares.list():
            if args.all or rec.state() == "active":
                print(
                    f"{rec.id}\t{rec.study_uid}\t{rec.state()}\t{rec.created_by}\t"
                    f"expires {_when(rec.expires_at)}"
                )
    else:
        rec = shares.revoke(args.share_id, f"cli:{getpass.getuser()}")
        print(f"revoked {rec.id}")
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def audit_command(cfg: Config, args: argparse.Namespace) -> int:
    """The same report as `/api/audit/verify` and the console; `--bucket` also walks the
    shipped segments record by record."""
    data = Path(args.dir or cfg.cloud.data_dir)
    if not args.replica and not (data / "replica_id").exists():
        msg = f"error: no audit log in {data} (no replica_id): give --dir or --replica"
        print(msg, file=sys.stderr)
        return 2
    key = audit_key(cfg.cloud, create=False)
    url = cfg.cloud.audit_store_url or cfg.cloud.store_url
    store = open_store(url, emulator_host=cfg.sync.emulator_host)
    report = verify_dir(data, key, store, segments=args.bucket, replica=args.replica or "")
    print(report.summary())
    for pr in report.problems[:50]:
        print(f"  {pr.kind}: {pr.line()}")
    if report.more_problems or len(report.problems) > 50:
        print(f"  ... {len(report.problems) + report.more_problems - 50} more")
    return 0 if report.ok else 1


def _dev_token(cfg: Config) -> str:
    """Dev only: the admin token `make up` users find in the file. The one written there by an
    earlier start is reused while it is still an active admin token (so each start no longer
    adds a revoked `dev-admin` row); otherwise the old one is revoked and a new one minted."""
    path = Path(cfg.cloud.dev_admin_token_file)
    tokens = TokenStore(cfg.cloud.tokens_file)
    try:
        kept = path.read_text().strip()
        p = tokens.authenticate(f"Bearer {kept}")
        if p.name == DEV_TOKEN_NAME and p.role == "admin":
            print(f"dev admin token (reused, in {path}): {kept}", flush=True)
            return kept
    except (FileNotFoundError, Unauthenticated):
        pass
    if any(r.name == DEV_TOKEN_NAME and r.revoked_at is None for r in tokens.list()):
        tokens.revoke(DEV_TOKEN_NAME)
    token = tokens.create(DEV_TOKEN_NAME, "admin", ["*"])
    write_atomic(path, (token + "\n").encode())
    print(f"dev admin token (also in {path}): {token}", flush=True)
    return token


def serve(cfg: Config) -> int:
    if cfg.cloud.dev_admin_token_file:
        _dev_token(cfg)
    # one config file, one bucket: the emulator setting of [sync] applies to the API too
    store = open_store(cfg.cloud.store_url, emulator_host=cfg.sync.emulator_host)
    audit_store = None
    if cfg.cloud.audit_store_url:
        audit_store = open_store(cfg.cloud.audit_store_url, emulator_host=cfg.sync.emulator_host)
    app = create_app(
        cfg.cloud, store, cfg.restore, audit_store=audit_store, retention=cfg.retention
    )
    return asyncio.run(_run(app, cfg))


async def _run(app: web.Application, cfg: Config) -> int:
    runner = make_runner(app)
    await runner.setup()  # brings the catalog up to date before the port opens
    site = web.TCPSite(runner, cfg.cloud.host, cfg.cloud.port, ssl_context=ssl_context(cfg.cloud))
    await site.start()
    scheme = "https" if cfg.cloud.tls_cert_file else "http"
    log.info("cloud API listening url=%s://%s:%d", scheme, cfg.cloud.host, cfg.cloud.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()
    return 0
