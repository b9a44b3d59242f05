"""Send a study to a registered node by hand (the study browser's "Send to node").

Decision: no second sender. A send is one route job per instance under the reserved route
`manual` (shared.config.MANUAL_ROUTE), queued in the routing queue (edge/routequeue.py), so the
forwarder delivers it with the sender it uses for every route (edge/sender.py through
`forwarder.dimse_sender`): one association per batch of the study, transfer syntax converted
when the node needs it, retries with backoff, the dead letter with its reason, and the
console's routing page showing it like any route. The instances are the ones a C-MOVE of the
study would send (`edge.retrieve.resolve`), so whatever that selection leaves out (deleted
studies, later) is never sent from here either.
"""

from __future__ import annotations

import time
from typing import Any

from pydicom.dataset import Dataset

from edge.retrieve import resolve
from edge.routequeue import JobState, enqueue_one_off
from shared.config import MANUAL_ROUTE
from shared.errors import InvalidField, NotFound
from shared.index import Database
from shared.registry import get_node
from shared.uids import is_valid_uid


def queue_study(db: Database, study_uid: str, destination: str) -> dict[str, Any]:
    """Queue every instance of `study_uid` for `destination`; returns the study's progress.
    InvalidField for an unknown node, NotFound for a study the index does not hold."""
    if not is_valid_uid(study_uid):
        raise InvalidField("study_uid", "not a valid UID")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    now = time.time()
    with db.write() as conn:
        if get_node(conn, destination) is None:
            raise InvalidField("destination", f"{destination[:16]!r} is not a registered node")
        uids = [r.sop_instance_uid for r in resolve(conn, identifier)]
        if not uids:
            raise NotFound(f"no study {study_uid} on this node")
        queued = enqueue_one_off(conn, MANUAL_ROUTE, destination, study_uid, uids, now)
    return {"queued": queued, "instances": len(uids)} | progress(db, study_uid)


def progress(db: Database, study_uid: str) -> dict[str, Any]:
    """Manual sends of a study per destination: jobs by state and the last error."""
    rows = db.reader().execute(
        "SELECT destination, state, count(*) AS n, max(last_error) AS err FROM route_jobs "
        "WHERE route = ? AND study_uid = ? GROUP BY destination, state",
        (MANUAL_ROUTE, study_uid),
    )
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        dest = out.setdefault(
            r["destination"], {"pending": 0, "sending": 0, "sent": 0, "dead": 0, "error": ""}
        )
        dest[r["state"]] = r["n"]
        if r["state"] == JobState.DEAD.value:
            dest["error"] = r["err"]
    return {"study_uid": study_uid, "route": MANUAL_ROUTE, "destinations": out}
