"""Three ``mlfs serve`` processes on one store and one PostgreSQL database: concurrent cold resolves spread over
them build once; a replica killed mid-build is taken over after its lease; eviction by one replica never makes
another serve a missing or partial file; /readyz reports the database."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from helpers.replicas import start_replicas, stop_all
from helpers.store import TOKEN, make_store

LEASE_S = 5.0  # short for the kill test, long enough that a starved builder on a busy machine keeps its claim
BUILD_DELAY_S = 2.0  # every build waits this long first (replica_serve.py): room to overlap it and to kill it
GRACE_S = 2.0
ENV = {"MLFS_OPERATOR_TOKEN": TOKEN, "MLFS_LEASE_S": str(LEASE_S), "MLFS_CLAIM_POLL_S": "0.2", "MLFS_BUILD_WAIT_S": "1",
       "MLFS_EVICT_GRACE_S": str(GRACE_S), "MLFS_CACHE_BUDGET_MB": "0", "TEST_BUILD_DELAY_S": str(BUILD_DELAY_S)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pg_admin):
    from helpers.postgres import fresh_database

    root = tmp_path_factory.mktemp("replicas")
    store = make_store(root / "store")
    url = fresh_database(pg_admin)
    replicas = start_replicas(store, url, root, 3, ENV)
    try:
        yield store, url, replicas
    finally:
        stop_all(replicas)


def body(max_memory_mb: float) -> dict:
    return {"model": "tiny", "budget": {"precision": "fp32", "max_memory_mb": max_memory_mb}}


def resolve_until_ready(url: str, budget_mb: float, timeout_s: float = 600) -> tuple[dict, int]:
    """Resolve until 200 (following 202s); returns the answer and how many 202s came first."""
    waits = 0
    deadline = time.time() + timeout_s
    with httpx.Client(timeout=60) as client:
        while time.time() < deadline:
            r = client.post(f"{url}/v1/resolve", json=body(budget_mb))
            if r.status_code == 200:
                return r.json(), waits
            assert r.status_code == 202, r.text
            waits += 1
            time.sleep(1.0)
    raise AssertionError(f"no artifact from {url} after {timeout_s} s")


def cache_folders(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "cache").iterdir() if p.name != ".locks")


def test_readyz_reports_the_shared_database(cluster):
    _, _, replicas = cluster
    for r in replicas:
        assert httpx.get(f"{r.url}/readyz").json() == {"status": "ready", "models": ["tiny"], "database": "postgresql"}


def test_64_concurrent_cold_resolves_over_three_replicas_build_once(cluster):
    store, url, replicas = cluster
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda i: resolve_until_ready(replicas[i % 3].url, 1000), range(64)))
    ids = {a["artifact_id"] for a, _ in answers}
    assert len(ids) == 1, ids
    assert sum(waits for _, waits in answers) > 0  # the build outlasted build_wait_s: every replica answered 202 first
    assert sum(r.builds() for r in replicas) == 1
    (artifact_id,) = ids
    assert cache_folders(store) == [artifact_id]  # one artifact, no work folder left
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM artifacts").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM build_claims").fetchone()[0] == 0  # released
    sha = answers[0][0]["sha256"]
    for r in replicas:  # every replica serves the one file, intact
        assert hashlib.sha256(httpx.get(f"{r.url}/v1/artifacts/{artifact_id}").content).hexdigest() == sha


def test_eviction_by_one_never_makes_another_serve_a_missing_or_partial_file(cluster):
    """Another process on the store and database (as ``mlfs warm`` or a replica after a build would) evicts with a
    budget of 0 while replicas 1 and 2 serve the artifact: it survives while used, goes after the grace period."""
    from server.cache import ArtifactCache
    from server.coordination import PostgresClaims
    from server.metadata import PostgresMetadata

    store, url, replicas = cluster
    first, _ = resolve_until_ready(replicas[0].url, 1000)
    meta = PostgresMetadata(url)
    evictor = ArtifactCache(store / "cache", meta, budget_bytes=0, claims=PostgresClaims(meta, LEASE_S), evict_grace_s=GRACE_S)
    statuses: list[int] = []
    stop = False

    def download_loop(url: str) -> None:
        with httpx.Client(timeout=30) as client:
            while not stop:
                r = client.get(f"{url}/v1/artifacts/{first['artifact_id']}")
                statuses.append(r.status_code)
                assert r.status_code == 200, r.text  # served throughout, never 404 or 500 while in use
                assert hashlib.sha256(r.content).hexdigest() == first["sha256"], "a partial or changed file"
                time.sleep(0.02)

    with ThreadPoolExecutor(2) as pool:
        downloads = [pool.submit(download_loop, r.url) for r in replicas[1:]]
        assert evictor.evict() == []  # marked, not deleted
        time.sleep(GRACE_S + 0.5)
        assert evictor.evict() == []  # the downloads used it since: revived, marked again
        stop = True
        for d in downloads:
            d.result()
    assert len(statuses) > 20 and first["artifact_id"] in cache_folders(store)
    assert evictor.evict() == []  # the last download revived it: marked afresh
    time.sleep(GRACE_S + 0.5)  # nobody uses it now
    assert evictor.evict() == [first["artifact_id"]]
    assert first["artifact_id"] not in cache_folders(store)
    for r in replicas:  # gone everywhere: a clear 404, and a resolve builds it again
        assert httpx.get(f"{r.url}/v1/artifacts/{first['artifact_id']}").status_code == 404


@pytest.mark.slow
def test_a_replica_killed_mid_build_is_taken_over_after_its_lease(cluster):
    store, url, replicas = cluster
    victim, survivors = replicas[0], replicas[1:]
    before = sum(r.builds() for r in survivors)
    r = httpx.post(f"{victim.url}/v1/resolve", json=body(1000), timeout=60)
    if r.status_code == 200:  # left by an earlier test: drop it so the victim must build it again
        httpx.delete(f"{victim.url}/v1/cache/{r.json()['artifact_id']}", headers={"Authorization": f"Bearer {TOKEN}"})
        r = httpx.post(f"{victim.url}/v1/resolve", json=body(1000), timeout=60)
    assert r.status_code == 202, r.text
    key = r.json()["artifact_id"]
    with psycopg.connect(url, autocommit=True) as conn:
        claim = lambda: conn.execute("SELECT owner FROM build_claims WHERE key = %s", (key,)).fetchone()  # noqa: E731
        while claim() is None:
            time.sleep(0.05)
        assert claim()[0].split(":")[1] == str(victim.proc.pid)
        os.kill(victim.proc.pid, signal.SIGKILL)  # mid-build: it holds the claim for BUILD_DELAY_S at least
        killed = time.monotonic()
        victim.proc.wait()
        answer, _ = resolve_until_ready(survivors[0].url, 1000)
        takeover_s = time.monotonic() - killed
        assert claim() is None  # released by the survivor that built it
    assert answer["artifact_id"] == key
    assert sum(r.builds() for r in survivors) == before + 1
    assert LEASE_S < takeover_s < 60, takeover_s
    assert not [p for p in (store / "cache").iterdir() if ".incomplete-" in p.name]  # the dead one's work is gone
    for r in survivors:
        data = httpx.get(f"{r.url}/v1/artifacts/{key}").content
        assert hashlib.sha256(data).hexdigest() == answer["sha256"]
