"""Typed, validated configuration: one `hpacs.toml`, loaded once by an entry point.

Every section is a frozen dataclass. Validation names the key (`edge.port: must be 1-65535,
got 70000`). Field metadata carries the check so adding a key is one line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from shared.dicomweb.urls import check_base_url, parse_networks
from shared.uids import is_valid_ae_title

PERMISSIONS = ("echo", "store", "find", "move", "get", "commit")


class ConfigError(ValueError):
    """A configuration error; the message starts with the dotted key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


Check = Callable[[Any], str | None]


def port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else f"must be 1-65535, got {v}"


def port_or_zero(v: int) -> str | None:
    return None if 0 <= v <= 65535 else f"must be 1-65535, got {v} (or 0 to disable)"


def positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v}"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v}"


def one_of(*choices: str) -> Check:
    def check(v: str) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"

    return check


def count_or_auto(v: int | str) -> str | None:
    if v == "auto" or (isinstance(v, int) and v > 0):
        return None
    return f'must be a positive integer or "auto", got {v!r}'


def catalog_url(v: str) -> str | None:
    """The cloud catalog: "" (a SQLite file under data_dir), sqlite:///path or postgresql://."""
    if v == "" or v.startswith(("sqlite:///", "postgresql://", "postgres://")):
        return None
    return "must be empty (SQLite under data_dir), sqlite:///path or postgresql://..."


def ae_title(v: str) -> str | None:
    return None if is_valid_ae_title(v) else f"not a valid AE title: {v!r}"


def permissions(v: list[str]) -> str | None:
    bad = [p for p in v if p not in PERMISSIONS]
    return f"unknown permission(s) {bad}; allowed: {', '.join(PERMISSIONS)}" if bad else None


def regex(v: str) -> str | None:
    try:
        re.compile(v)
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    return None


_WATERMARK_RE = re.compile(r"^\s*\d+(\.\d+)?\s*(%|B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.I)


def watermark(v: str) -> str | None:
    if not _WATERMARK_RE.match(v):
        return f'must be a size like "20GB" or a percent of the disk like "90%", got {v!r}'
    if v.strip().endswith("%") and not 0 < float(v.strip()[:-1]) <= 100:
        return f"a percent must be in (0, 100], got {v!r}"
    return None


def cidr_list(v: list[str]) -> str | None:
    try:
        parse_networks(v)
    except ValueError as exc:
        return f'must be a list of IP networks like "10.0.0.0/8": {exc}'
    return None


def emulator_url(v: str) -> str | None:
    if v and not re.fullmatch(r"https?://[^/\s]+/?", v):
        return f'must be empty or a URL like "http://127.0.0.1:4443", got {v!r}'
    return None


_DAY = r"(mon|tue|wed|thu|fri|sat|sun)"
_SCHEDULE = re.compile(
    rf"^(?:{_DAY}(?:-{_DAY})?(?:,{_DAY}(?:-{_DAY})?)* )?"
    r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d$",
    re.IGNORECASE,
)


def schedule(v: str) -> str | None:
    if not v or _SCHEDULE.match(v.strip()):
        return None
    return f"must look like 'HH:MM-HH:MM' or 'Mon-Fri HH:MM-HH:MM', got {v!r}"


def checked(default: Any = dataclasses.MISSING, check: Check | None = None, **kw: Any) -> Any:
    meta = {"check": check} if check else {}
    if default is dataclasses.MISSING and "default_factory" not in kw:
        return field(metadata=meta, **kw)
    if "default_factory" in kw:
        return field(metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class TlsConfig:
    port: int = checked(2762, port_or_zero)
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""  # client certificates are verified against this when set (mutual TLS)
    require_client_cert: bool = False


@dataclass(frozen=True)
class EdgeConfig:
    ae_title: str = checked("HPACS", ae_title)
    host: str = "0.0.0.0"
    port: int = checked(11112, port_or_zero)
    data_dir: str = "var/edge"
    check_called_ae: bool = True
    max_associations: int = checked(32, positive)
    max_pdu_bytes: int = checked(262144, positive)
    max_object_bytes: int = checked(4 * 1024**3, positive)
    association_timeout_s: float = checked(60.0, positive)
    dimse_timeout_s: float = checked(60.0, positive)
    network_timeout_s: float = checked(60.0, positive)
    # Before association: the whole A-ASSOCIATE-RQ must arrive within this (ARTIM), and at most
    # this many such unauthenticated connections wait per acceptor process.
    artim_timeout_s: float = checked(10.0, positive)
    max_unauthenticated: int = checked(16, positive)
    duplicates: str = checked("keep", one_of("keep", "replace"))
    min_free_bytes: int = checked(256 * 1024**2, non_negative)
    find_max_results: int = checked(5000, positive)
    acceptors: int | str = checked("auto", count_or_auto)  # "auto": one per core
    # "full": each ingest COMMIT fsyncs the WAL. "normal" (Orthanc's setting): COMMIT is atomic
    # and survives a process crash but reaches the disk at the next checkpoint; after a power
    # loss the fsynced file is still there and start-up reconciliation re-indexes it.
    index_synchronous: str = checked("full", one_of("full", "normal"))
    http_host: str = "127.0.0.1"
    http_port: int = checked(8080, port_or_zero)
    console_token_file: str = ""  # empty: <data_dir>/console_token, generated at first start
    viewer_dir: str = ""  # the OHIF build served at /viewer/; "": where `make viewer` installs it
    # Console sign-in (edge/webauth.py): signed session cookies, their lifetime and key file
    # ("": <data_dir>/session.key), Secure cookies also over plain HTTP (behind a TLS proxy),
    # and failed sign-ins allowed per user name and per client address within a window.
    session_ttl_s: float = checked(8 * 3600.0, positive)
    session_key_file: str = ""
    session_cookie_secure: bool = False
    login_max_failures_per_user: int = checked(5, positive)
    login_max_failures_per_client: int = checked(20, positive)
    login_window_s: float = checked(900.0, positive)
    # The edge's audit trail (edge/audit.py): HMAC key ("": <data_dir>/audit.key), rotation,
    # and how often serve ships it to audit/<sync.site>/ (no store_url: it stays local).
    audit_key: str = ""
    audit_max_bytes: int = checked(64 * 1024**2, positive)
    audit_ship_interval_s: float = checked(60.0, positive)
    # Dashboard: a small write+fsync probe of the cache disk every this many seconds (0: off)
    disk_probe_interval_s: float = checked(30.0, non_negative)
    readyz_timeout_s: float = checked(2.0, positive)  # per readiness check (index lock, store)
    import_dir: str = ""
    import_settle_s: float = checked(2.0, positive)  # a hot-folder file must stop growing this long
    import_rescan_s: float = checked(30.0, positive)  # full rescan: watchdog events are only hints
    log_level: str = checked("INFO", one_of("DEBUG", "INFO", "WARNING", "ERROR"))
    tls: TlsConfig = field(default_factory=TlsConfig)

    @property
    def acceptor_count(self) -> int:
        """`acceptors` resolved: "auto" is the number of cores this process may use, or 1
        when no DIMSE listener is configured (both ports 0: there is no port to share)."""
        if isinstance(self.acceptors, int):
            return self.acceptors
        if not self.port and not self.tls.port:
            return 1
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)

    @property
    def cache_dir(self) -> Path:
        return Path(self.data_dir) / "cache"

    @property
    def index_path(self) -> Path:
        return Path(self.data_dir) / "index.sqlite"


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str = checked(check=ae_title)
    host: str = checked()
    port: int = checked(check=port)
    tls: bool = False
    permissions: list[str] = checked(
        default_factory=lambda: ["echo", "store", "find", "move", "get"], check=permissions
    )
    max_associations: int = checked(0, non_negative)  # 0: only the global limit applies


@dataclass(frozen=True)
class RouteConfig:
    name: str = checked()
    destinations: list[str] = checked(default_factory=list)
    calling_ae: str = ""
    modality: str = ""
    sop_class_uid: str = ""
    body_part: str = ""
    study_description: str = checked("", regex)
    series_description: str = checked("", regex)
    schedule: str = checked("", schedule)  # "[Mon-Fri ]HH:MM-HH:MM" (local time), empty: always
    stable_after_s: float = checked(0.0, non_negative)
    max_attempts: int = checked(10, positive)
    concurrency: int = checked(1, positive)
    backoff_initial_s: float = checked(5.0, positive)
    backoff_max_s: float = checked(600.0, positive)


@dataclass(frozen=True)
class SyncConfig:
    store_url: str = "file://var/bucket"
    site: str = "dev"
    upload_concurrency: int = checked(4, positive)
    upload_timeout_s: float = checked(60.0, positive)
    max_attempts: int = checked(8, positive)
    backoff_initial_s: float = checked(1.0, positive)
    backoff_max_s: float = checked(300.0, positive)
    poll_interval_s: float = checked(1.0, positive)
    catalog_batch: int = checked(500, positive)
    cache_high_watermark: str = checked("90%", watermark)
    cache_low_watermark: str = checked("75%", watermark)
    min_cache_age_s: float = checked(3600.0, non_negative)
    evict_interval_s: float = checked(30.0, positive)
    status_log_interval_s: float = checked(60.0, positive)
    recall_concurrency: int = checked(8, positive)
    # background re-verification of cached files (sync/scrub.py); 0 turns the scrub off
    scrub_bytes_per_s: int = checked(8 * 1024 * 1024, non_negative)
    # "http://127.0.0.1:4443": talk to a GCS emulator (anonymous credentials) instead of Google
    emulator_host: str = checked("", emulator_url)


@dataclass(frozen=True)
class RestoreConfig:
    prefetch_days: int = checked(7, non_negative)
    poll_interval_s: float = checked(10.0, positive)


def ae_titles(v: list[str]) -> str | None:
    bad = [a for a in v if not is_valid_ae_title(a)]
    return f"not valid AE title(s): {bad}" if bad else None


@dataclass(frozen=True)
class RetentionRule:
    """One minimum-retention rule (shared/retention.py): criteria, then how long it keeps."""

    name: str = checked()
    modalities: list[str] = checked(default_factory=list)  # any of these in the study; []: any
    calling_aes: list[str] = checked(default_factory=list, check=ae_titles)  # []: any sender
    min_patient_age_years: int = checked(0, non_negative)  # age at the study date, inclusive
    max_patient_age_years: int = checked(0, non_negative)  # exclusive; 0: no upper bound
    years: int = checked(0, non_negative)  # kept at least this long from the study date
    until_patient_age_years: int = checked(0, non_negative)  # and until this age (0: no)


@dataclass(frozen=True)
class RetentionConfig:
    # a deleted study's bytes stay in the bucket this long (undelete possible), then the sync
    # agent purges them; fractions of a day are allowed (0: at the agent's next purge pass)
    delete_grace_days: float = checked(7.0, non_negative)
    purge_interval_s: float = checked(60.0, positive)  # how often the agent looks for purges
    purge_batch: int = checked(100, positive)  # instances claimed per purge step
    auto_purge: bool = False  # delete studies whose retention ran out, through the same path
    auto_purge_dry_run: bool = False  # only log (and audit) what auto_purge would delete
    auto_purge_interval_s: float = checked(86400.0, positive)
    rules: list[RetentionRule] = field(default_factory=list)


@dataclass(frozen=True)
class CloudConfig:
    host: str = "127.0.0.1"
    port: int = checked(8081, port)
    store_url: str = "file://var/bucket"
    data_dir: str = "var/cloud"
    tokens_file: str = "var/cloud/tokens.json"
    catalog: str = checked("", catalog_url)  # "" = <data_dir>/catalog.sqlite; or postgresql://
    catalog_pool_size: int = checked(8, positive)  # PostgreSQL connections per replica
    catalog_poll_interval_s: float = checked(5.0, positive)
    max_body_bytes: int = checked(2 * 1024**3, positive)
    query_max_results: int = checked(1000, positive)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    dev_admin_token_file: str = ""  # dev only: mint an admin token at start and write it here
    cors_origins: list[str] = checked(default_factory=list)  # web viewers (OHIF) on other origins
    # where clients reach the API ("https://pacs.example.org"): RetrieveURL/BulkDataURI start
    # with it; empty: from trusted proxies' Forwarded/X-Forwarded-* headers or the request
    public_base_url: str = checked("", check_base_url)
    trusted_proxies: list[str] = checked(default_factory=list, check=cidr_list)  # CIDRs
    log_level: str = checked("INFO", one_of("DEBUG", "INFO", "WARNING", "ERROR"))
    # The audit trail (shared/audit.py): HMAC key ("": <data_dir>/audit.key, a path or
    # file:///path; gcp-kms://... is refused until implemented), rotation and shipping.
    audit_key: str = ""
    audit_max_bytes: int = checked(64 * 1024**2, positive)
    audit_ship_interval_s: float = checked(60.0, positive)
    audit_store_url: str = ""  # "": store_url; a bucket of its own can carry a retention policy
    # Requests refused before a route (no valid token): one audit record per client address and
    # window, and a token bucket per address (429 with Retry-After beyond it).
    denied_window_s: float = checked(60.0, positive)
    denied_rate_per_s: float = checked(2.0, positive)
    denied_burst: int = checked(20, positive)
    denied_max_clients: int = checked(10000, positive)
    viewer_dir: str = ""  # the OHIF build (@ohif/app dist/); "": where `make viewer` installs it
    session_ttl_s: float = checked(8 * 3600.0, positive)  # browser session lifetime
    session_key_file: str = ""  # signing key; "": <data_dir>/session.key; replicas share one
    session_cookie_secure: bool = False  # Secure cookie also over plain HTTP (TLS ends at a proxy)


@dataclass(frozen=True)
class Config:
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    nodes: list[NodeConfig] = field(default_factory=list)
    routes: list[RouteConfig] = field(default_factory=list)
    sync: SyncConfig = field(default_factory=SyncConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)
    source_path: str = ""


def _convert(key: str, tp: Any, value: Any) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table, got {type(value).__name__}")
        return _build(key, tp, value)
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list, got {type(value).__name__}")
        return [_convert(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if isinstance(tp, types.UnionType):  # e.g. `int | str`: the first member that fits
        for member in get_args(tp):
            try:
                return _convert(key, member, value)
            except ConfigError:
                continue
        names = " or ".join(m.__name__ for m in get_args(tp))
        raise ConfigError(key, f"must be {names}, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported type {tp}")  # pragma: no cover


def _build(prefix: str, cls: Any, data: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source_path"}
    for name in data:
        if name not in fields:
            raise ConfigError(_join(prefix, name), "unknown key")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, "required")
            continue
        value = _convert(key, hints[name], data[name])
        check = f.metadata.get("check")
        if check is not None:
            reason = check(value)
            if reason:
                raise ConfigError(key, reason)
        kwargs[name] = value
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# The route name of jobs queued by "send to node" in the study browser (edge/studysend.py).
MANUAL_ROUTE = "manual"
MANUAL_ROUTE_REASON = f"{MANUAL_ROUTE!r} is reserved for sends from the study browser"


def parse_config(data: dict[str, Any], source_path: str = "") -> Config:
    """Build and validate a Config from parsed TOML."""
    cfg = _build("", Config, data)
    _check_cross(cfg)
    return dataclasses.replace(cfg, source_path=source_path)


def _check_cross(cfg: Config) -> None:
    seen: set[str] = set()
    for i, node in enumerate(cfg.nodes):
        if node.ae_title in seen:
            raise ConfigError(f"nodes[{i}].ae_title", f"duplicate AE title {node.ae_title!r}")
        seen.add(node.ae_title)
    # A route may name any registered node, from [[nodes]] or the registry (CLI, console): the
    # registry lives in the index, so destinations are checked where it is known, at serve
    # start-up and when a route is edited (edge/routestore.py), not here.
    names: set[str] = set()
    for i, route in enumerate(cfg.routes):
        if route.name == MANUAL_ROUTE:
            raise ConfigError(f"routes[{i}].name", MANUAL_ROUTE_REASON)
        if route.name in names:
            raise ConfigError(f"routes[{i}].name", f"duplicate route name {route.name!r}")
        names.add(route.name)
    rules: set[str] = set()
    for i, rule in enumerate(cfg.retention.rules):
        if rule.name in rules:
            raise ConfigError(f"retention.rules[{i}].name", f"duplicate rule name {rule.name!r}")
        rules.add(rule.name)
        lo, hi = rule.min_patient_age_years, rule.max_patient_age_years
        if hi and lo >= hi:
            raise ConfigError(
                f"retention.rules[{i}].max_patient_age_years", f"must be > {lo} (or 0)"
            )
        if not rule.years and not rule.until_patient_age_years:
            raise ConfigError(f"retention.rules[{i}]", "set years and/or until_patient_age_years")
    tls = cfg.edge.tls
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("edge.tls", "cert_file and key_file must be set together")
    if cfg.edge.tls.require_client_cert and not cfg.edge.tls.ca_file:
        raise ConfigError("edge.tls.require_client_cert", "needs edge.tls.ca_file")


def parse_route(data: dict[str, Any]) -> RouteConfig:
    """One route from a JSON object (the console's route form); errors name the field."""
    route: RouteConfig = _build("", RouteConfig, data)
    if not route.name.strip():
        raise ConfigError("name", "required")
    if route.name == MANUAL_ROUTE:
        raise ConfigError("name", MANUAL_ROUTE_REASON)
    if not route.destinations:
        raise ConfigError("destinations", "name at least one registered node")
    for dest in route.destinations:
        if not is_valid_ae_title(dest):
            raise ConfigError("destinations", f"not a valid AE title: {dest[:40]!r}")
    return route


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; relative data paths stay relative to the CWD."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError("config", f"file not found: {p}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{p} is not valid TOML: {exc}") from exc
    return parse_config(data, source_path=str(p))
