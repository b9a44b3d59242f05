"""STOW-RS responses (PS3.18 10.5.3): the status and the DICOM JSON body, from part outcomes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.dicomweb.source import StoredPart


def status(outcomes: Sequence[StoredPart]) -> int:
    """200 all stored, 202 some failed, 409 none stored (PS3.18 Table 10.5.3-1)."""
    stored = sum(1 for o in outcomes if not o.failure)
    if stored and stored == len(outcomes):
        return 200
    return 202 if stored else 409


def response_json(base: str, outcomes: Sequence[StoredPart], study: str | None) -> dict[str, Any]:
    """The Store Instances Response Module; URLs start with `base` (the public DICOMweb root)."""

    def ui(v: str) -> dict[str, Any]:
        return {"vr": "UI", "Value": [v]} if v else {"vr": "UI"}

    ok, failed = [], []
    for o in outcomes:
        item = {"00081150": ui(o.sop_class_uid), "00081155": ui(o.sop_instance_uid)}
        if not o.failure:
            url = f"{base}/studies/{o.study_uid}/series/{o.series_uid}/instances/"
            item["00081190"] = {"vr": "UR", "Value": [url + o.sop_instance_uid]}
            ok.append(item)
        else:
            item["00081197"] = {"vr": "US", "Value": [o.failure]}
            failed.append(item)
    body: dict[str, Any] = {}
    study_uid = study or next((o.study_uid for o in outcomes if not o.failure), "")
    if study_uid:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study_uid}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if ok:
        body["00081199"] = {"vr": "SQ", "Value": ok}
    return body
