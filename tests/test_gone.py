"""A deleted or a lost instance: the locator (the edge's reads) and the recaller (read-through,
the agent's prefetch) refuse it with the one error shared.recall.gone makes, on a running edge
over a real index."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.locate import InstanceRef, Locator
from shared.errors import NotFound
from shared.quarantine import LOST_ADVICE
from tests.support.damage import rig


def test_deleted_and_lost_are_refused_alike_by_the_locator_and_the_recaller(
    tmp_path: Path,
) -> None:
    with rig(tmp_path, f"file://{tmp_path / 'bucket'}") as r:
        uid = r.site.add_study(3)
        deleted, lost, kept = r.rows(uid)
        with r.site.db.write() as conn:  # the states as deletion and recall leave them
            conn.execute("UPDATE instances SET state = 'deleted' WHERE id = ?", (deleted["id"],))
            conn.execute("UPDATE instances SET state = 'lost' WHERE id = ?", (lost["id"],))
        locator = Locator(r.server.db, r.server.cache, r.server.recaller)
        assert r.server.recaller is not None
        expected = {
            deleted["id"]: (f"{deleted['sop_instance_uid']}: the instance was deleted", ""),
            lost["id"]: (
                f"{lost['sop_instance_uid']}: the instance is lost (no intact copy in the cache "
                "or the object store)",
                LOST_ADVICE,
            ),
        }
        for row in (deleted, lost):
            ref = InstanceRef.from_row(r.row(row["sop_instance_uid"]))
            for read in (locator.read, r.server.recaller.recall):
                with pytest.raises(NotFound) as exc:
                    read(ref)
                assert (str(exc.value), exc.value.hint) == expected[row["id"]], read
        assert locator.read(InstanceRef.from_row(kept)) == r.cache_file(kept).read_bytes()
