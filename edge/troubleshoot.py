"""The dashboard's "last errors", each with the action that fixes it (the admin guide's
troubleshooting steps, built in).

`advice` is pure (a kind and a detail -> what to do, and which console action does it) and
tested from a table; `last_errors` gathers the rows: rejected associations, refused stores
(0x0124), failed storage commitments, upload errors and dead forwarding jobs (plus undelivered
commitment reports where the index keeps them). Repeats of one problem are one row with a
count and the latest time, so a flood never hides the rest.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

WINDOW_S = 7 * 86400  # problems older than a week are history, not "last errors"


@dataclass(frozen=True)
class Advice:
    text: str
    action: str = ""  # add_node, edit_node, retry_routes, open_routing, open_nodes


def advice(kind: str, detail: str, calling_ae: str = "") -> Advice:
    """What an admin does about one kind of problem."""
    if kind == "association_rejected":
        if detail.startswith("unknown calling AE"):
            return Advice(f"Register {calling_ae} as a node if it is one of yours", "add_node")
        if detail.startswith("address "):
            return Advice(f"{calling_ae} called from another address: check its host", "edit_node")
        if detail.startswith("called AE"):
            return Advice("The sender calls another AE title: set it to this edge's AE title")
        if "limit" in detail:
            return Advice(
                "Too many associations at once: raise the node's limit or edge.max_associations",
                "edit_node" if detail.startswith("node") else "",
            )
        return Advice("See the reason and the node's settings", "open_nodes")
    if kind == "store_refused":
        return Advice(f"Grant the store permission to {calling_ae}, if it should send", "edit_node")
    if kind == "commitment_failed":
        if "not delivered" in detail:
            return Advice(
                f"The report could not reach {calling_ae}: check its host and port", "edit_node"
            )
        return Advice("Ask the modality to send the missing instances again, then recommit")
    if kind == "route_dead":
        return Advice("Fix the destination (Test connection), then retry the jobs", "retry_routes")
    if kind == "commitment_report_failed":
        return Advice("Check the node's address; the report is retried from the routing queue")
    if kind == "upload_failed":
        return Advice("Permanent upload error: check the bucket, its permissions and the instance")
    if kind == "upload_conflict":
        return Advice("Other bytes exist in the bucket under this UID: compare them, keep one")
    if kind.startswith("upload_"):
        return Advice("Upload retrying: check the network and the object store (readyz)")
    return Advice("")


def _row(at: float, kind: str, ae: str, peer: str, detail: str, count: int) -> dict[str, Any]:
    a = advice(kind, detail, ae)
    return {
        "at": at,
        "kind": kind,
        "calling_ae": ae,
        "peer": peer,
        "detail": detail,
        "count": count,
        "advice": a.text,
        "action": a.action,
    }


def last_errors(conn: sqlite3.Connection, now: float, limit: int = 10) -> list[dict[str, Any]]:
    since = now - WINDOW_S
    out = [
        _row(r[0], r[1], r[2], r[3], r[4], r[5])
        for r in conn.execute(
            "SELECT max(at), kind, calling_ae, peer, detail, count(*) FROM events "
            "WHERE at >= ? GROUP BY kind, calling_ae, peer, detail ORDER BY max(at) DESC LIMIT ?",
            (since, limit),
        )
    ]
    out += [
        _row(r[0], f"upload_{r[1]}", "", "", r[2], r[3])
        for r in conn.execute(
            "SELECT max(state_changed_at), state, last_error, count(*) FROM instances "
            "WHERE (state IN ('failed','conflict') OR (state IN ('cached','uploading') "
            "AND next_attempt_at > 0)) AND last_error != '' GROUP BY state, last_error "
            "ORDER BY max(state_changed_at) DESC LIMIT ?",
            (limit,),
        )
    ]
    out += [
        _row(r[0], "route_dead", r[1], "", f"route {r[2]}: {r[3]}", r[4])
        for r in conn.execute(
            "SELECT max(updated_at), destination, route, last_error, count(*) FROM route_jobs "
            "WHERE state = 'dead' GROUP BY destination, route, last_error "
            "ORDER BY max(updated_at) DESC LIMIT ?",
            (limit,),
        )
    ]
    out += _commitment_reports(conn, limit)
    out.sort(key=lambda e: e["at"] or 0, reverse=True)
    return out[:limit]


def _commitment_reports(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """Undelivered reports, where the index has a persistent report queue (a later schema)."""
    has = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'commitment_reports'"
    ).fetchone()
    if not has:
        return []
    return [
        _row(r[0], "commitment_report_failed", r[1], "", r[2], r[3])
        for r in conn.execute(
            "SELECT max(updated_at), calling_ae, last_error, count(*) FROM commitment_reports "
            "WHERE state = 'failed' GROUP BY calling_ae, last_error "
            "ORDER BY max(updated_at) DESC LIMIT ?",
            (limit,),
        )
    ]
