"""A cache filesystem that really fills up while datasets arrive (a small tmpfs).

Needs permission to mount a tmpfs (root with CAP_SYS_ADMIN, as on CI); skipped otherwise,
with a reason that says how to run it (HOW_TO_RUN).
The edge must answer 0xA700, keep what it stored, stay usable on the same association, and
count the association out when it ends.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.server import EdgeServer
from shared.checksum import crc32c_file
from shared.errors import OUT_OF_RESOURCES, SUCCESS
from shared.synthetic import StudySpec, write_study
from tests.support.edge import association, edge_config, running_edge
from tests.support.net import wait_for

HOW_TO_RUN = (
    "run it as root (CAP_SYS_ADMIN), or as any user in its own user and mount namespace: "
    "`unshare -rm .venv/bin/pytest tests/test_ingest_full_disk.py`"
)


@pytest.fixture
def small_cache(tmp_path: Path) -> Iterator[Path]:
    cache = tmp_path / "edge" / "cache"
    cache.mkdir(parents=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cache)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): {HOW_TO_RUN}")
    try:
        yield cache
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)


@pytest.fixture
def server(tmp_path: Path, small_cache: Path) -> Iterator[EdgeServer]:
    with running_edge(edge_config(tmp_path)) as srv:
        yield srv


def test_disk_filling_during_receive_is_out_of_resources(
    server: EdgeServer, tmp_path: Path
) -> None:
    files = write_study(
        StudySpec(instances_per_series=10, rows=256, columns=256), tmp_path / "in"
    )  # ~130 KB each: the 1 MiB cache holds 7
    statuses = []
    with association(server.ports[0]) as assoc:
        for f in files:
            statuses.append(int(assoc.send_c_store(f).Status))
        assert OUT_OF_RESOURCES in statuses
        first_failure = statuses.index(OUT_OF_RESOURCES)
        assert set(statuses[:first_failure]) == {SUCCESS}
        assert set(statuses[first_failure:]) == {OUT_OF_RESOURCES}
        # the association is still alive and answers
        assert int(assoc.send_c_echo().Status) == SUCCESS
    wait_for(lambda: server.active_associations() == 0, what="association counted out")
    rows = server.db.reader().execute("SELECT path, crc32c FROM instances").fetchall()
    assert len(rows) == first_failure
    for row in rows:
        assert crc32c_file(server.cache.path(row["path"])) == row["crc32c"]
    assert list(server.cache.tmp.iterdir()) == []
    # space comes back (eviction): storing works again on a new association
    server.cache.path(rows[0]["path"]).unlink()
    server.cache.path(rows[1]["path"]).unlink()
    with association(server.ports[0]) as assoc:
        assert int(assoc.send_c_store(files[-1]).Status) == SUCCESS
