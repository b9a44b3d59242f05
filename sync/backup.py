"""Config backup: the config file and the node registry go to `config/<site>/<ts>/` on change.

A restore needs the node registry as well as the index; it changes rarely, so a digest in the
settings table decides whether there is anything new to upload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from shared.index import Database
from shared.keys import config_key
from shared.registry import list_nodes
from shared.store import ObjectStore

log = logging.getLogger("hpacs.sync.backup")

DIGEST_SETTING = "sync.config_backup_sha256"


def snapshot(db: Database, config_path: str) -> tuple[bytes, bytes]:
    nodes = [n.as_dict() for n in list_nodes(db.reader())]
    config = Path(config_path).read_bytes() if config_path else b""
    return config, json.dumps({"nodes": nodes}, indent=1, sort_keys=True).encode()


def backup_if_changed(db: Database, store: ObjectStore, site: str, config_path: str) -> bool:
    """Upload a new backup when the config file or the registry changed; True if it did."""
    config, nodes = snapshot(db, config_path)
    digest = hashlib.sha256(config + b"\0" + nodes).hexdigest()
    if db.get_setting(DIGEST_SETTING) == digest:
        return False
    now = time.time()
    ts = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    if config:
        store.put(
            config_key(site, ts, "hpacs.toml"),
            config,
            content_type="application/toml",
            if_absent=False,
        )
    store.put(
        config_key(site, ts, "nodes.json"), nodes, content_type="application/json", if_absent=False
    )
    with db.write() as conn:
        db.set_setting(conn, DIGEST_SETTING, digest)
    log.info("config backed up prefix=%s", config_key(site, ts, "x")[:-2])
    return True
