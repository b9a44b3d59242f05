"""A real PostgreSQL for the tests: one temporary cluster per test session (deploy/pgcluster.py),
a fresh database per user of it, torn down at the end. Never a mock."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deploy.pgcluster import Cluster

_names = itertools.count(1)


@contextmanager
def temporary_cluster() -> Iterator[Cluster]:
    # short path (the socket lives there) in a directory the postgres user can traverse
    root = Path(tempfile.mkdtemp(prefix="pg-", dir=os.environ.get("TMPDIR") or "/tmp"))
    os.chmod(root, 0o755)
    cluster = Cluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


def fresh_database(cluster: Cluster) -> str:
    """A new empty database; its URL."""
    return cluster.create_database(f"t{os.getpid()}_{next(_names)}")
