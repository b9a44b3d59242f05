"""Cache paths: the shape check `shared.keys.is_cache_relpath` and `edge.cache.Cache.path`,
which joins the index's own paths without resolving and refuses anything leaving the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cache import Cache
from shared.keys import cache_relpath, is_cache_relpath


def test_only_the_shape_cache_relpath_gives_passes() -> None:
    rel = cache_relpath("1.2.840.10008.1.2.3")
    assert is_cache_relpath(rel)
    for bad in (
        "../" + rel,
        rel + "\n",
        rel.upper(),
        rel.replace("/", "", 1),
        "ab/cd/" + "0" * 63 + ".dcm",
        "/" + rel,
    ):
        assert not is_cache_relpath(bad), bad


def test_cache_path_joins_ours_and_refuses_an_escape(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    rel = cache_relpath("1.2.3.4")
    assert cache.path(rel) == cache.root / rel
    assert cache.path("legacy/x.dcm") == cache.root / "legacy" / "x.dcm"  # resolved, inside
    (tmp_path / "outside").mkdir()
    (cache.root / "ab").symlink_to(tmp_path / "outside")
    with pytest.raises(ValueError, match="escapes the cache"):
        cache.path("ab/x.dcm")  # not our shape: resolved, and it leaves the root
    with pytest.raises(ValueError, match="escapes the cache"):
        cache.path("../outside/x.dcm")
