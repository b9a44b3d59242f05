from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.server import EdgeServer
from tests.support.edge import edge_config, running_edge


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[EdgeServer]:
    """A running edge node with DCMTK's default AE titles registered."""
    with running_edge(edge_config(tmp_path)) as server:
        yield server
