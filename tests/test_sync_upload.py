"""The upload loop and the catalog journal, against file:// and the GCS emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.catalog import decode_batch
from shared.checksum import crc32c_file
from shared.keys import catalog_key, catalog_prefix, conflict_key
from shared.store import ObjectStore, open_store
from sync.catalog import SEQ_SETTING
from tests.support.gcs import BUCKET, Emulator, fault_proxy, gcs_store, running_emulator
from tests.support.sync import Site, site


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with running_emulator() as emu:
        yield emu


_n = iter(range(10**6))


@pytest.fixture(params=["file", "gs"])
def store_site(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Site, ObjectStore]]:
    if request.param == "file":
        url = f"file://{tmp_path / 'bucket'}"
        store = open_store(url)
    else:
        emu: Emulator = request.getfixturevalue("emulator")
        prefix = f"u{next(_n)}"
        url = f"gs://{BUCKET}/{prefix}"
        store = gcs_store(emu.url, prefix=prefix)
    with site(tmp_path, url) as s:
        yield s, store


def _check_synced_and_verified(s: Site, store: ObjectStore) -> None:
    rows = s.rows()
    assert rows and all(r["state"] == "synced" for r in rows), s.states()
    for r in rows:
        info = store.head(r["object_key"])
        assert info is not None and info.crc32c == r["crc32c"] == crc32c_file(
            s.cache.root / r["path"]
        )
        assert info.size == r["size"]


def test_backlog_uploads_verified_and_journalled(store_site: tuple[Site, ObjectStore]) -> None:
    s, store = store_site
    s.add_study(3)
    s.add_study(2, patient_name="MÜLLER^ÄNNE", specific_character_set="ISO_IR 100")
    agent = s.agent(store=store)
    try:
        agent.drain()
    finally:
        agent.close()
    _check_synced_and_verified(s, store)
    keys = [i.key for i in store.list(catalog_prefix("test"))]
    assert keys == [catalog_key("test", 1)]
    with store.open(keys[0]) as fh:
        journal = decode_batch(fh.read())
    by_uid = {r.header.sop_instance_uid: r for r in journal}
    assert len(by_uid) == 5
    for r in s.rows():
        row = by_uid[r["sop_instance_uid"]]
        assert (row.crc32c, row.size, row.object_key) == (r["crc32c"], r["size"], r["object_key"])
        assert row.header.transfer_syntax == r["transfer_syntax"]
        assert row.site == "test" and r["catalog_seq"] == 1
    assert {r.header.patient_name for r in journal} >= {"MÜLLER^ÄNNE"}


def test_catalog_sequence_continues_after_restart(store_site: tuple[Site, ObjectStore]) -> None:
    s, store = store_site
    s.add_study(1)
    a = s.agent(store=store)
    a.drain()
    a.close()
    s.add_study(1)
    with s.db.write() as conn:  # even a lost setting does not reuse a number: the bucket knows
        conn.execute("DELETE FROM settings WHERE key = ?", (SEQ_SETTING,))
    b = s.agent(store=store)
    b.drain()
    b.close()
    keys = [i.key for i in store.list(catalog_prefix("test"))]
    assert keys == [catalog_key("test", 1), catalog_key("test", 2)]
    assert s.db.get_setting(SEQ_SETTING) == "3"


def test_existing_object_with_same_bytes_counts_as_uploaded(
    store_site: tuple[Site, ObjectStore],
) -> None:
    s, store = store_site
    s.add_study(2)
    r = s.rows()[0]
    key = _key(s, r)
    store.put(key, s.cache.root / r["path"])  # as if an earlier attempt landed before a crash
    a = s.agent(store=store)
    a.drain()
    a.close()
    _check_synced_and_verified(s, store)


def test_different_bytes_become_conflict_never_overwritten(
    store_site: tuple[Site, ObjectStore],
) -> None:
    s, store = store_site
    s.add_study(2)
    r = s.rows()[0]
    key = _key(s, r)
    store.put(key, b"someone else's bytes")
    a = s.agent(store=store)
    a.drain()
    a.close()
    row = s.rows("id = ?", (r["id"],))[0]
    assert row["state"] == "conflict" and "different bytes" in row["last_error"]
    assert store.open(key).read() == b"someone else's bytes"
    study, series, sop = key[len("instances/") : -len(".dcm")].split("/")
    ckey = conflict_key(study, series, sop, r["crc32c"])
    assert row["object_key"] == ckey
    assert store.open(ckey).read() == (s.cache.root / r["path"]).read_bytes()
    assert s.states() == {"conflict": 1, "synced": 1}
    journal = decode_batch(store.open(catalog_key("test", 1)).read())
    assert {j.object_key for j in journal} >= {ckey}


def _key(s: Site, r: object) -> str:
    from shared.keys import instance_key

    q = s.db.reader().execute(
        "SELECT st.study_uid, se.series_uid, i.sop_instance_uid FROM instances i "
        "JOIN series se ON se.id = i.series_id JOIN studies st ON st.id = i.study_id "
        "WHERE i.id = ?",
        (r["id"],),  # type: ignore[index]
    )
    return instance_key(*q.fetchone())


# ---- injected faults: a proxy in front of the emulator (no real peer fails on demand) --------


def test_injected_429_503_retry_with_state_in_row_invariant_6(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Transient errors leave attempts, next attempt time and last error in the row; then all
    end synced and verified, none evicted on the way."""
    with fault_proxy(emulator.port) as proxy:
        failures = iter([429, 503] * 3)
        proxy.rules.append(lambda m, p: next(failures, None) if m == "POST" else None)
        store = gcs_store(proxy.url, prefix="faults429")
        with site(
            tmp_path,
            f"gs://{BUCKET}/faults429",
            upload_concurrency=1,
            backoff_initial_s=30,
            backoff_max_s=60,
        ) as s:
            s.add_study(2)
            a = s.agent(store=store)
            a.uploader.run_batch()  # every upload meets 3 injected errors in a row
            rows = s.rows()
            assert [r["state"] for r in rows] == ["cached", "cached"]
            for r in rows:
                assert r["attempts"] == 1 and "transient" in r["last_error"]
                assert r["next_attempt_at"] > r["state_changed_at"] + 10
            # a restart (a new agent on the same index) keeps the schedule: nothing is due
            a.close()
            a = s.agent(store=store)
            assert a.uploader.run_batch().claimed == 0
            with s.db.write() as conn:  # the clock moves on
                conn.execute("UPDATE instances SET next_attempt_at = 0")
            a.drain()
            a.evictor.run()
            a.close()
            _check_synced_and_verified(s, store)
        assert sum(1 for x in proxy.seen if x[2] in (429, 503)) == 6


def test_corrupted_upload_is_detected_removed_and_retried(
    emulator: Emulator, tmp_path: Path
) -> None:
    with fault_proxy(emulator.port) as proxy:
        corrupt = iter(["corrupt", "corrupt"])
        proxy.rules.append(lambda m, p: next(corrupt, None) if m == "POST" else None)
        store = gcs_store(proxy.url, prefix="corrupt")
        with site(
            tmp_path,
            f"gs://{BUCKET}/corrupt",
            upload_concurrency=1,
            cache_high_watermark="1B",
            cache_low_watermark="1B",
        ) as s:
            s.add_study(2, rows=128, columns=128)
            a = s.agent(store=store)
            a.uploader.run_batch()
            rows = s.rows()
            assert [r["state"] for r in rows] == ["cached", "cached"]
            assert all("checksum mismatch" in r["last_error"] for r in rows)
            assert all(store.head(_key(s, r)) is None for r in rows)  # bad copies removed
            assert a.evictor.run().instances_evicted == 0  # none evicted on the way
            with s.db.write() as conn:
                conn.execute("UPDATE instances SET next_attempt_at = 0")
            a.drain()
            a.close()
            _check_synced_and_verified(s, store)


def test_permanent_error_marks_failed_without_looping(emulator: Emulator, tmp_path: Path) -> None:
    with fault_proxy(emulator.port) as proxy:
        proxy.rules.append(lambda m, p: 403 if m == "POST" else None)
        store = gcs_store(proxy.url, prefix="perm")
        with site(
            tmp_path,
            f"gs://{BUCKET}/perm",
            cache_high_watermark="1B",
            cache_low_watermark="1B",
        ) as s:
            s.add_study(2)
            a = s.agent(store=store)
            a.drain()
            assert s.states() == {"failed": 2}
            assert all("HTTP 403" in r["last_error"] for r in s.rows())
            assert a.uploader.run_batch().claimed == 0
            assert a.evictor.run().instances_evicted == 0  # failed instances stay local
            a.close()
        posts = [x for x in proxy.seen if x[0] == "POST"]
        assert len(posts) == 2
