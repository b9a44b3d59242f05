"""The edge's audit trail: the site's chain (shared/siteaudit.py, shared with the sync agent),
and who runs a CLI verb."""

from __future__ import annotations

import getpass
import os

from shared.siteaudit import KEY_SETTING, SiteAudit, audit_key

EdgeAudit = SiteAudit

__all__ = ["KEY_SETTING", "EdgeAudit", "audit_key", "cli_actor"]


def cli_actor() -> str:
    """Who runs a CLI verb: the operating-system account (`cli:<user>`)."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no passwd entry (a container's arbitrary uid)
        return f"cli:uid{os.getuid()}"
