"""The aggregation of DICOMweb reads in the edge's audit trail (edge/accesslog.py), on a fake
clock: the first read of a (user, client, study) is recorded at once, the rest of its window
counted into one summary, failures recorded one by one."""

from __future__ import annotations

from typing import Any

from edge.accesslog import AccessLog


def reads(log: AccessLog, now: float, study: str = "1.2.3", action: str = "wado-frames",
          status: int = 200, actor: str = "ann") -> None:  # fmt: skip
    log.read(
        actor=actor, role="viewer", client="10.0.0.1", study_uid=study, action=action,
        detail=f"{action} detail", status=status, now=now,
    )  # fmt: skip


def test_first_read_at_once_the_rest_summarised_when_the_window_ends() -> None:
    out: list[dict[str, Any]] = []
    log = AccessLog(lambda **kw: out.append(kw), window_s=60)
    reads(log, 0.0, action="wado-metadata")
    assert [(r["action"], r["outcome"], r["study_uid"]) for r in out] == [
        ("wado-metadata", "ok", "1.2.3")
    ]
    for t in range(1, 11):
        reads(log, float(t))
    reads(log, 12.0, action="wado-thumbnail")
    assert len(out) == 1  # counted, not written
    assert log.flush(59.0) == 0 and len(out) == 1  # the window is still open
    assert log.flush(60.0) == 1
    assert out[-1]["detail"] == "11 more requests: wado-frames=10 wado-thumbnail=1"
    reads(log, 61.0)  # a new window: recorded at once again
    assert out[-1]["action"] == "wado-frames" and out[-1]["detail"] == "wado-frames detail"


def test_failures_are_recorded_each_and_keys_are_apart() -> None:
    out: list[dict[str, Any]] = []
    log = AccessLog(lambda **kw: out.append(kw), window_s=60)
    reads(log, 0.0)
    reads(log, 1.0, status=404)
    reads(log, 2.0, status=403)
    reads(log, 3.0, study="1.2.4")  # another study: its own first record
    reads(log, 4.0, actor="bob")  # another user: its own first record
    assert [r["outcome"] for r in out] == ["ok", "error", "denied", "ok", "ok"]
    assert out[1]["detail"].endswith("status=404")
    assert log.flush(5.0, everything=True) == 3  # three windows closed...
    assert len(out) == 5  # ... with nothing more to say: none had a second read


def test_a_window_ended_by_a_new_read_is_summarised_first() -> None:
    out: list[dict[str, Any]] = []
    log = AccessLog(lambda **kw: out.append(kw), window_s=60)
    reads(log, 0.0)
    reads(log, 1.0)
    reads(log, 70.0)  # no flush ran in between (a stopped housekeeping tick)
    assert [r["detail"] for r in out] == [
        "wado-frames detail",
        "1 more requests: wado-frames=1",
        "wado-frames detail",
    ]
