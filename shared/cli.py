"""What every entry point (hpacs-edge, hpacs-sync, hpacs-cloud) does before its own command.

Parse `--config`, load the file once and report a bad key by its name, the same way in all
three: config is read by entry points only, so this is the one place that does it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from shared.config import Config, ConfigError, load_config


def entry_parser(
    prog: str, description: str
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    """The parser with the common `--config` option and its required subcommand set."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", default="hpacs.toml", help="path to hpacs.toml")
    return p, p.add_subparsers(dest="command", required=True)


def load_entry_config(
    prog: str,
    path: str,
    *,
    missing_ok: bool = False,
    validate: Callable[[Config], object] | None = None,
) -> Config | None:
    """The loaded config, or None after printing `<prog>: config error: ...` (the caller exits
    with 2). `missing_ok`: a missing file means the defaults; `validate` runs checks that need
    more than one key and raise ConfigError."""
    try:
        cfg = Config() if missing_ok and not Path(path).exists() else load_config(path)
        if validate is not None:
            validate(cfg)
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return None
    return cfg
