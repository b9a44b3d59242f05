from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import _config as pynetdicom_config

from edge.server import EdgeServer
from tests.support.edge import edge_config, running_edge

# The pynetdicom peers of the tests run in the test process, so their own logs land in the
# records the tests inspect for hpacs's lines: keep them from logging identifiers (patient
# names and IDs), as the edge's log never does. The edge itself no longer uses pynetdicom's
# DIMSE layer (edge/dimse/), so these settings touch only the test peers.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[EdgeServer]:
    """A running edge node with DCMTK's default AE titles registered."""
    with running_edge(edge_config(tmp_path)) as server:
        yield server
