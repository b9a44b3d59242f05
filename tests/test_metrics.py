"""`/metrics` on the edge after real DIMSE traffic: every family of issue 6 with live values."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics
from shared.lifecycle import State, transition
from shared.rows import Origin
from shared.synthetic import StudySpec, write_study
from tests.support.console import call, running_http
from tests.support.dcmtk import run
from tests.support.edge import edge_config, running_edge
from tests.support.net import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(http: object) -> Samples:
    status, headers, body = call(http, "/metrics", token=None)  # type: ignore[arg-type]
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_show_every_family_with_live_values_after_an_ingest(tmp_path: Path) -> None:
    data = edge_config(tmp_path, http_port=free_port())
    nostore = {"ae_title": "NOSTORE", "host": "127.0.0.1", "port": 104, "permissions": ["echo"]}
    data["nodes"].append(nostore)
    data["sync"] = {"store_url": f"file://{tmp_path}/bucket", "cache_high_watermark": "90%"}
    files = write_study(StudySpec(instances_per_series=3), tmp_path / "in")
    with running_edge(data) as edge, running_http(edge) as http:
        port = str(edge.ports[0])
        before = scrape(http)
        r = run("storescu", "-aet", "STORESCU", "-aec", "HPACS", "127.0.0.1", port, *files)
        assert r.returncode == 0, r.stderr
        run("storescu", "-aet", "NOSTORE", "-aec", "HPACS", "127.0.0.1", port, files[0])
        r = run("echoscu", "-aet", "STRANGER", "-aec", "HPACS", "127.0.0.1", port)
        assert r.returncode != 0  # unknown calling AE: rejected
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
        r = run("findscu", "-aet", "FINDSCU", "-aec", "HPACS", "-S", *keys, "127.0.0.1", port)
        assert r.returncode == 0, r.stderr
        after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    sizes = sum(f.stat().st_size for f in files)
    assert delta("hpacs_associations_total") == 3  # storescu, NOSTORE, findscu
    assert ("hpacs_associations_active", ()) in after
    assert delta("hpacs_associations_rejected_total", reason="unknown_calling_ae") == 1
    assert delta("hpacs_instances_stored_total", outcome="stored", source="dimse") == 3
    assert delta("hpacs_instances_failed_total", status="0x0124") == 1
    # the stored files hold the bytes sent (file meta rewritten by the receiver: within 1 KB)
    assert abs(delta("hpacs_ingest_bytes_total", source="dimse") - sizes) < 1024 * len(files)
    assert delta("hpacs_query_duration_seconds_count", level="STUDY") == 1
    assert delta("hpacs_query_duration_seconds_bucket", level="STUDY", le="+Inf") == 1

    cache = value(after, "hpacs_cache_bytes")
    assert abs(cache - sizes) < 1024 * len(files)
    high = value(after, "hpacs_cache_watermark_bytes", level="high")
    cap = value(after, "hpacs_cache_capacity_bytes")
    assert high == int(cap * 0.9)
    assert 0 < value(after, "hpacs_cache_watermark_bytes", level="low") < high
    assert value(after, "hpacs_sync_backlog_instances") == 3
    assert value(after, "hpacs_sync_backlog_bytes") == cache
    assert value(after, "hpacs_sync_backlog_oldest_age_seconds") > 0
    for kind in ("permanent", "conflict", "retrying"):
        assert value(after, "hpacs_upload_errors", kind=kind) == 0
    for state in ("pending", "sending", "sent", "dead"):
        assert ("hpacs_route_queue_jobs", (("state", state),)) in after
    assert ("hpacs_instances_lost", ()) in after and value(after, "hpacs_instances_lost") == 0
    for name in (
        "hpacs_scrub_verified_bytes_total",
        "hpacs_scrub_verified_instances_total",
        "hpacs_scrub_damaged_total",
        "hpacs_scrub_last_full_pass_timestamp_seconds",
    ):
        assert (name, ()) in after


def test_upload_errors_and_backlog_follow_the_rows_the_sync_agent_writes(tmp_path: Path) -> None:
    data = edge_config(tmp_path, http_port=free_port())
    files = write_study(StudySpec(instances_per_series=3), tmp_path / "in")
    with running_edge(data) as edge, running_http(edge) as http:
        r = run("storescu", "-aet", "STORESCU", "-aec", "HPACS", "127.0.0.1", edge.ports[0], *files)
        assert r.returncode == 0, r.stderr
        ids = [row[0] for row in edge.db.reader().execute("SELECT id FROM instances ORDER BY id")]
        with edge.db.write() as conn:  # what the sync agent does, through the one transition
            for i in ids:
                assert transition(conn, i, State.CACHED, State.UPLOADING)
            assert transition(conn, ids[0], State.UPLOADING, State.FAILED, last_error="403")
            assert transition(conn, ids[1], State.UPLOADING, State.CONFLICT, last_error="crc")
            assert transition(
                conn,
                ids[2],
                State.UPLOADING,
                State.CACHED,
                last_error="timeout",
                attempts=1,
                next_attempt_at=time.time() + 30,  # backing off, as the uploader does
            )
        after = scrape(http)
    assert value(after, "hpacs_upload_errors", kind="permanent") == 1
    assert value(after, "hpacs_upload_errors", kind="conflict") == 1
    assert value(after, "hpacs_upload_errors", kind="retrying") == 1
    assert value(after, "hpacs_sync_backlog_instances") == 1


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("called AE 'X' is not ours", "called_ae"),
        ("unknown calling AE", "unknown_calling_ae"),
        ("address 10.0.0.9 is not the node's (10.0.0.1)", "address"),
        ("global association limit 32 reached", "global_limit"),
        ("node association limit 2 reached", "node_limit"),
        ("something new", "other"),
    ],
)
def test_rejection_reasons_become_bounded_labels(reason: str, code: str) -> None:
    assert metrics.rejection_code(reason) == code


@pytest.mark.parametrize(
    ("spec", "capacity", "expected"),
    [
        ("90%", 1000, 900),
        ("75 %", 1000, 750),
        ("20GB", 0, 20 * 10**9),
        ("2GiB", 0, 2 * 1024**3),
        ("500mb", 0, 500 * 10**6),
        ("1000", 0, 1000),
    ],
)
def test_watermark_bytes(spec: str, capacity: int, expected: int) -> None:
    assert metrics.watermark_bytes(spec, capacity) == expected


async def test_http_middleware_counts_by_route_template_and_status() -> None:
    async def study(request: web.Request) -> web.Response:
        if request.match_info["uid"] == "0":
            raise web.HTTPNotFound()
        return web.json_response({})

    app = web.Application(middlewares=[metrics.http_metrics_middleware()])
    app.router.add_get("/studies/{uid}", study)
    registry = metrics.cloud_registry(catalog_lag_s=lambda: 12.5)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]

    def count(status: str) -> float:
        text = metrics.render(registry).decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        labels = (("method", "GET"), ("route", "/studies/{uid}"), ("status", status))
        return samples.get(("hpacs_http_requests_total", labels), 0.0)

    ok0, missing0 = count("200"), count("404")
    try:
        async with ClientSession() as session:
            for uid in ("1.2.3", "1.2.4", "0"):
                async with session.get(f"http://127.0.0.1:{port}/studies/{uid}") as resp:
                    await resp.read()
    finally:
        await runner.cleanup()
    assert count("200") - ok0 == 2
    assert count("404") - missing0 == 1
    text = metrics.render(registry).decode()
    assert "hpacs_catalog_lag_seconds 12.5" in text
    bucket = (
        'hpacs_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/studies/{uid}"}'
    )
    assert bucket in text


def test_every_ingest_door_is_counted(tmp_path: Path) -> None:
    """Hot folder, import and STOW go through the same ingest path as C-STORE: same counters."""
    data = edge_config(tmp_path, http_port=free_port())
    files = write_study(StudySpec(instances_per_series=2), tmp_path / "in")
    with running_edge(data) as edge, running_http(edge) as http:
        before = scrape(http)
        for f in files:
            edge.ingestor.ingest_path(f, Origin("import"))
        edge.ingestor.ingest_path(files[0], Origin("hotfolder"))  # same bytes again
        after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("hpacs_instances_stored_total", outcome="stored", source="import") == 2
    assert delta("hpacs_instances_stored_total", outcome="duplicate", source="hotfolder") == 1
    assert delta("hpacs_ingest_bytes_total", source="import") == value(after, "hpacs_cache_bytes")
    assert delta("hpacs_ingest_bytes_total", source="hotfolder") == 0
