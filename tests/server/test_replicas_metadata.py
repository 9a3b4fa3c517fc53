"""Metadata in SQLite and PostgreSQL (same behaviour, versioned schema, migrations) and build claims across
replicas (leases that are renewed, expire and are taken over). PostgreSQL is a real throwaway cluster."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time

import psycopg
import pytest

from server.coordination import PostgresClaims
from server.errors import DatabaseUnavailable, LeaseLost
from server.metadata import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ArtifactRecord,
    PostgresMetadata,
    SQLiteMetadata,
    open_metadata,
)
from slicer.errors import ConfigError

KEY = "a" * 64
OTHER = "b" * 64


@pytest.fixture(params=["sqlite", "postgresql"])
def meta(request, tmp_path):
    if request.param == "sqlite":
        return SQLiteMetadata(tmp_path / "meta.sqlite")
    return PostgresMetadata(request.getfixturevalue("pg_url"))


def record(key: str = KEY, size: int = 10, **kw) -> ArtifactRecord:
    return ArtifactRecord(key, size, {"model.onnx": {"sha256": "0" * 64, "size": size}}, {"precision": "fp32"}, **kw)


def test_both_databases_keep_artifacts_pins_hits_and_latency_alike(meta):
    assert meta.schema_version() == SCHEMA_VERSION
    meta.put_artifact(record(build_seconds=1.5, size=3 * 2**31))  # sizes past 32 bits
    meta.put_artifact(record(OTHER))
    got = meta.get_artifact(KEY)
    assert (got.size, got.files, got.info, got.pinned, got.hits, got.build_seconds, got.evicting) == (
        3 * 2**31, record(size=3 * 2**31).files, {"precision": "fp32"}, False, 0, 1.5, None)
    meta.touch(KEY)
    meta.set_pinned(KEY, True)
    got = meta.get_artifact(KEY)
    assert got.hits == 1 and got.pinned
    assert next(r.key for r in meta.list_artifacts()) == KEY  # most recently used first
    meta.put_artifact(record(OTHER, size=99))  # replaces
    assert meta.get_artifact(OTHER).size == 99
    meta.delete_artifact(OTHER)
    assert meta.get_artifact(OTHER) is None
    for ms in (2.0, 4.0):
        meta.put_latency("p", "cfg", "fp32", 128, 1, ms, "device")
    assert meta.latency_table("p") == [{"config_key": "cfg", "precision": "fp32", "seq_len": 128, "batch": 1,
                                        "source": "device", "ms": 3.0, "samples": 2, "clients": 1, "spread": 0.0}]
    assert meta.latency_table("other") == []
    version = meta.latency_version()
    meta.put_calibration(2, (1.0, 2.0, 3.0), {"runs": 3})
    meta.put_calibration(2, (1.5, 2.0, 3.0), {"runs": 4})  # one row per thread count: replaced
    assert {t: c["coeffs"] for t, c in meta.calibration().items()} == {2: (1.5, 2.0, 3.0)}
    assert meta.latency_version() != version  # cached estimates are dropped
    meta.ping()


def test_eviction_marks_are_cancelled_by_use_and_deleted_only_after_the_grace_period(meta):
    meta.put_artifact(record())
    meta.put_artifact(record(OTHER, pinned=True))
    assert not meta.mark_evicting(OTHER)  # pinned
    assert meta.mark_evicting(KEY) and not meta.mark_evicting(KEY)  # marked once
    assert meta.get_artifact(KEY).evicting is not None
    assert not meta.delete_evicted(KEY, grace_s=60)  # too soon
    assert meta.revive(KEY)  # a use cancels it
    assert not meta.delete_evicted(KEY, grace_s=0)  # no longer marked
    assert meta.mark_evicting(KEY)
    meta.set_pinned(KEY, True)  # pinning cancels it too
    assert meta.get_artifact(KEY).evicting is None
    meta.set_pinned(KEY, False)
    assert meta.mark_evicting(KEY)
    time.sleep(0.05)
    assert meta.delete_evicted(KEY, grace_s=0.01)
    assert meta.get_artifact(KEY) is None and not meta.revive(KEY)  # a late user learns it is gone


V1_SQLITE = f"""
CREATE TABLE artifacts (
    key TEXT PRIMARY KEY, size INTEGER NOT NULL, files TEXT NOT NULL, info TEXT NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0, hits INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, last_used REAL NOT NULL, build_seconds REAL NOT NULL DEFAULT 0
);
CREATE TABLE latency (
    profile TEXT NOT NULL, config_key TEXT NOT NULL, precision TEXT NOT NULL, seq_len INTEGER NOT NULL,
    batch INTEGER NOT NULL, ms REAL NOT NULL, source TEXT NOT NULL, measured REAL NOT NULL
);
INSERT INTO artifacts VALUES ('{KEY}', 7, '{{}}', '{{"precision": "int8"}}', 1, 3, 1.0, 2.0, 0.5);
INSERT INTO latency VALUES ('p', 'cfg', 'fp32', 128, 1, 5.0, 'bench', 1.0);
"""


def test_sqlite_store_from_before_versioning_is_migrated_in_place(tmp_path):
    db = sqlite3.connect(tmp_path / "meta.sqlite")
    db.executescript(V1_SQLITE)  # the first release's layout, no schema_version table
    db.close()
    meta = SQLiteMetadata(tmp_path / "meta.sqlite")
    assert meta.schema_version() == SCHEMA_VERSION
    got = meta.get_artifact(KEY)
    assert (got.size, got.pinned, got.hits, got.info, got.evicting) == (7, True, 3, {"precision": "int8"}, None)
    assert meta.latency_table("p")[0]["ms"] == 5.0
    assert meta.mark_evicting(KEY) is False  # pinned: the new column works on old rows
    assert SQLiteMetadata(tmp_path / "meta.sqlite").schema_version() == SCHEMA_VERSION  # reopening changes nothing


def test_postgres_from_empty_and_from_the_previous_version(pg_url, pg_admin):
    from helpers.postgres import fresh_database

    assert PostgresMetadata(pg_url).schema_version() == SCHEMA_VERSION
    assert PostgresMetadata(pg_url).schema_version() == SCHEMA_VERSION  # opening again changes nothing

    previous = fresh_database(pg_admin)
    with psycopg.connect(previous, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for sql, dialects in MIGRATIONS[0]:
            if "postgresql" in dialects:
                conn.execute(sql)
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute("INSERT INTO artifacts VALUES (%s, 7, '{}', '{}', 0, 3, 1.0, 2.0, 0.5)", (KEY,))
    meta = PostgresMetadata(previous)
    assert meta.schema_version() == SCHEMA_VERSION
    assert meta.get_artifact(KEY).hits == 3 and meta.mark_evicting(KEY)
    assert PostgresClaims(meta).acquire(KEY) == 1  # the claims table came with the migration


def test_replicas_starting_at_once_migrate_once(pg_url):
    errors, versions = [], []

    def start():
        try:
            versions.append(PostgresMetadata(pg_url).schema_version())
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and versions == [SCHEMA_VERSION] * 6


def test_a_database_newer_than_the_server_is_refused(pg_url, tmp_path):
    PostgresMetadata(pg_url)._execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(ConfigError, match="newer than this server"):
        PostgresMetadata(pg_url)
    db = SQLiteMetadata(tmp_path / "m.sqlite")
    db._execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(ConfigError, match="upgrade the server"):
        SQLiteMetadata(tmp_path / "m.sqlite")


def test_database_url_must_be_postgres(tmp_path):
    assert isinstance(open_metadata(tmp_path, None), SQLiteMetadata)
    with pytest.raises(ConfigError, match=r"postgresql:// URL.*'mysql'"):
        open_metadata(tmp_path, "mysql://user:pw@host/db")


def test_an_unreachable_database_is_a_clear_error():
    with pytest.raises(DatabaseUnavailable, match="unreachable"):
        PostgresMetadata("postgresql://postgres@127.0.0.1:1/none", connect_timeout_s=1)


def test_a_claim_is_held_while_renewed_and_taken_over_after_its_holder_stops(pg_url):
    a = PostgresClaims(PostgresMetadata(pg_url), lease_s=0.6, poll_s=0.05, owner="replica-a")
    b = PostgresClaims(PostgresMetadata(pg_url), lease_s=0.6, poll_s=0.05, owner="replica-b")
    with a.claim(KEY) as lease_a:
        with b.try_claim(KEY) as got:
            assert got is None
        time.sleep(1.5)  # > lease_s: renewals keep it
        with b.try_claim(KEY) as got:
            assert got is None
        assert b.holders() == {KEY: "replica-a"}
        lease_a.confirm()
        with b.try_claim(OTHER) as other:  # other keys are independent
            assert other is not None
        # replica a "dies": its renewals stop, the row stays
        lease_a._stop.set()
        lease_a._thread.join()
        start = time.monotonic()
        with b.claim(KEY) as lease_b:
            waited = time.monotonic() - start
            assert 0.1 < waited < 3.0, waited
            assert b.holders() == {KEY: "replica-b"} and lease_b.generation == lease_a.generation + 1
            with pytest.raises(LeaseLost, match="took the claim over"):
                lease_a.confirm()  # the old holder may not publish
    assert b.holders() == {}  # a's late release deleted nothing of b's either
    with a.try_claim(KEY) as again:
        assert again is not None


def test_closing_releases_the_claims_of_builds_still_running(pg_url):
    """A replica shutting down (SIGTERM) with a build still running hands its key over at once, not after the
    lease, and the abandoned build may not publish."""
    a = PostgresClaims(PostgresMetadata(pg_url), lease_s=30, poll_s=0.05, owner="replica-a")
    b = PostgresClaims(PostgresMetadata(pg_url), lease_s=30, poll_s=0.05, owner="replica-b")
    with a.claim(KEY) as abandoned:
        a.close()
        assert b.holders() == {}
        with b.try_claim(KEY) as taken:
            assert taken is not None  # at once, 30 s before the lease would have lapsed
            with pytest.raises(LeaseLost, match="shutting down"):
                abandoned.confirm()
    with a.claim(OTHER):  # a finished build's claim goes as before
        pass
    assert b.holders() == {}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_a_build_that_loses_its_claim_publishes_nothing(pg_url, tmp_path):
    from helpers.postgres import CuttableProxy

    from server.cache import ArtifactCache

    proxy = CuttableProxy(_port(pg_url))
    meta = PostgresMetadata(proxy.url(pg_url), connect_timeout_s=1)
    cache = ArtifactCache(tmp_path / "cache", meta, 10**6, claims=PostgresClaims(meta, lease_s=0.6, poll_s=0.05))
    other = PostgresClaims(PostgresMetadata(pg_url), lease_s=0.6, owner="replica-b")

    def build(folder):
        (folder / "model.onnx").write_bytes(b"graph")
        proxy.cut()  # this replica loses the database mid-build
        deadline = time.monotonic() + 10
        while other.acquire(KEY) is None:  # the claim expires and another replica takes it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        proxy.restore()
        if crash:  # the successor removed our work folder (remove_stale_partials): the build's next write fails
            shutil.rmtree(folder)
            (folder / "manifest.json").write_text("{}")
        return {"precision": "fp32"}

    crash = False
    with pytest.raises(LeaseLost):
        cache.get_or_build(KEY, build)  # finished after losing the claim: not published
    crash = True
    with pytest.raises(LeaseLost, match="lost its claim"):
        cache.get_or_build(KEY, build)  # crashed because it lost it: LeaseLost (503), not a raw FileNotFoundError
    assert not (tmp_path / "cache" / KEY).exists() and meta.get_artifact(KEY) is None
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name != ".locks"] == []


def test_a_replica_that_loses_the_database_says_so_and_recovers(pg_url, tmp_path):
    import httpx
    from helpers.postgres import CuttableProxy
    from helpers.store import make_store, running_server

    proxy = CuttableProxy(_port(pg_url))
    store = make_store(tmp_path / "store")
    with running_server(store, database_url=proxy.url(pg_url), db_connect_timeout_s=1) as url:
        assert httpx.get(f"{url}/readyz").json()["database"] == "postgresql"
        proxy.cut()
        r = httpx.get(f"{url}/readyz")
        assert r.status_code == 503 and "metadata database unreachable" in r.json()["detail"], r.text
        r = httpx.post(f"{url}/v1/resolve", json={"model": "tiny", "budget": {"max_memory_mb": 1000}}, timeout=60)
        assert r.status_code == 503 and "unreachable" in r.json()["detail"] and r.headers["Retry-After"], r.text
        assert str(proxy.port) not in r.text and "127.0.0.1" not in r.text  # where the database is stays private
        proxy.restore()
        assert httpx.get(f"{url}/readyz").status_code == 200  # reconnects by itself


def test_local_claims_see_other_processes_and_spare_a_live_builders_work_folder(tmp_path):
    """SQLite mode: a key another process is building cannot be claimed, and a starting cache removes only the work
    folders of keys nobody holds (it used to judge by process id, which means nothing across hosts)."""
    import subprocess
    import sys

    from server.cache import ArtifactCache
    from server.coordination import LocalClaims

    root = tmp_path / "cache"
    (root / ".locks").mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\ntime.sleep(60)", str(root / ".locks" / KEY)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        claims = LocalClaims(root / ".locks")
        with claims.try_claim(KEY) as got:
            assert got is None
        with claims.try_claim(OTHER) as got:
            assert got is not None
        (root / f".{KEY}.incomplete-999999-1").mkdir()  # being built by the holder
        (root / f".{OTHER}.incomplete-999999-1").mkdir()  # left by a builder that died
        ArtifactCache(root, SQLiteMetadata(tmp_path / "meta.sqlite"), 10**6)
        assert sorted(p.name for p in root.iterdir() if p.name != ".locks") == [f".{KEY}.incomplete-999999-1"]
    finally:
        holder.kill()
        holder.wait()
