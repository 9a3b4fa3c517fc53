"""Replicas on one store and one PostgreSQL database (README "Deployment"), measured side by side in one run:

- warm ``POST /v1/resolve`` throughput with the same clients sent to 1 replica or spread over 3 (rounds
  interleaved 1, 3, 1, 3);
- PostgreSQL statements per warm resolve (transactions committed in the database per resolve: every statement
  runs in autocommit, so one transaction is one round trip);
- takeover: a replica is killed (SIGKILL) while it builds; the time from the kill until another replica has
  built the artifact, against that replica's own build time (the difference is the lease wait);
  (these three: ``replicas_bench.py throughput``, ``benchmarks/results/server-replicas.json``)
- ``rolling``: devices resolve and download through a load balancer (``tests/helpers/replicas.Balancer``: failover
  on a refused or cut connection and on 503, Retry-After honoured on 202/503) while each replica in turn is
  stopped with SIGTERM (the first in the middle of a cold build) and started again, after a steady phase of the
  same length without restarts: requests, failures, p50/p99 latency and the longest wait a device saw, side by
  side (``benchmarks/results/server-replicas-rolling.json``).
 Needs the MiniLM teacher prepared and either ``--database-url`` (an
empty database) or PostgreSQL's binaries on PATH (a throwaway cluster is started, as in the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated

import httpx
import psycopg
import typer
from rich.console import Console
from rich.table import Table
from server_bench import RESULTS, TOKEN, finish, hammer, temp_store

from server.store import load_models, write_models

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

app = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=False, pretty_exceptions_enable=False,
                  add_completion=False)
console = Console(width=None if sys.stdout.isatty() else 140)
LEASE_S = 5.0
WARM = {"max_memory_mb": 300, "seq_len": 64, "precision": "fp32"}
COLD_CONFIG = {"layers": 3, "heads": 6, "ffn": 768}  # built during the takeover measurement only


@contextmanager
def database(url: str | None):
    if url:
        yield url
        return
    from helpers import postgres as pg_cluster

    if pg_cluster.missing():
        raise typer.BadParameter(f"give --database-url: {pg_cluster.missing()}")
    with pg_cluster.cluster() as admin:
        yield pg_cluster.fresh_database(admin)


def commits(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def artifact_count(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM artifacts").fetchone()[0]


def warm_in_background(url: str, body: dict) -> None:
    """``POST /v1/cache/warm`` from a thread, for a replica about to be stopped under it."""
    def warm() -> None:
        with contextlib.suppress(httpx.TransportError):
            httpx.post(f"{url}/v1/cache/warm", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=900)

    threading.Thread(target=warm, daemon=True).start()


async def spread(urls: list[str], body: dict, clients: int, requests: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    await asyncio.gather(*(hammer(u, body, clients // len(urls), requests // len(urls)) for u in urls))
    return requests // len(urls) * len(urls), time.perf_counter() - t0


@app.command()
def throughput(model: Annotated[str, typer.Option(help="Served model of the default store.")] = "minilm-sentiment",
         requests: Annotated[int, typer.Option(help="Resolves per round.")] = 600,
         clients: Annotated[int, typer.Option(help="Concurrent clients (divisible by 3).")] = 24,
         database_url: Annotated[str | None, typer.Option(help="An empty PostgreSQL database (default: throwaway).")] = None,
         out_dir: Annotated[Path, typer.Option(help="Where result JSON goes.")] = RESULTS,
         quick: Annotated[bool, typer.Option("--quick", help="Smoke run (few resolves per round), into results/quick/, marked smoke.")] = False) -> None:
    """Warm resolve throughput on 1 vs 3 replicas, PostgreSQL statements per resolve, takeover after kill -9."""
    started = time.perf_counter()
    requests = min(requests, 48) if quick else requests
    body = {"model": model, "device": {"memory_available_mb": 300, "cpu_count": 2}, "budget": WARM}
    from helpers.replicas import Replica

    env = {"MLFS_OPERATOR_TOKEN": TOKEN, "MLFS_BUILD_WAIT_S": "600", "MLFS_LEASE_S": str(LEASE_S),
           "MLFS_CLAIM_POLL_S": "0.2"}
    with database(database_url) as db, temp_store() as store, ExitStack() as stack:
        write_models(store, {model: load_models(store)[model]})  # serve only the measured model: faster starts
        replicas = []
        for i in range(3):  # one at a time: three model loads at once only slow each other down
            replica = Replica(store, db, store, i, env)  # its log in the (temporary) store folder
            stack.callback(replica.stop)
            replica.wait_ready(time.time() + 600)
            replicas.append(replica)
        urls = [r.url for r in replicas]
        httpx.post(f"{urls[0]}/v1/resolve", json=body, timeout=900).raise_for_status()  # the cold build
        asyncio.run(spread(urls, body, 3, 60))  # every replica verifies the files once and warms up

        # statements per warm resolve, sequential, on one replica
        n = 200
        time.sleep(2)  # backends report their statistics at most once a second: let the counts settle
        before = commits(db)
        asyncio.run(hammer(urls[0], body, 1, n))
        time.sleep(2)
        per_resolve = (commits(db) - before - 1) / n  # -1: the counting query's own connection

        rounds = []
        asyncio.run(spread(urls, body, clients, requests))  # warm-up at full concurrency, not measured
        for label in ("1 replica", "3 replicas") * 3:
            targets = urls[:1] if label == "1 replica" else urls
            done, wall = asyncio.run(spread(targets, body, clients, requests))
            rounds.append({"replicas": len(targets), "resolves": done, "wall_s": wall, "per_s": done / wall})
            console.print(f"{label}: {done / wall:.0f} resolves/s")

        # takeover: replica 2 builds a cold config and is killed mid-build; replica 0 finishes it
        victim = replicas[2]
        warm_body = {"model": model, "configs": [COLD_CONFIG]}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        warm_in_background(victim.url, warm_body)
        with psycopg.connect(db, autocommit=True) as conn:
            while conn.execute("SELECT 1 FROM build_claims WHERE owner LIKE %s", (f"%:{victim.proc.pid}:%",)).fetchone() is None:
                time.sleep(0.05)
        time.sleep(1.0)  # well into the build
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed = time.perf_counter()
        warmed = httpx.post(f"{urls[0]}/v1/cache/warm", json=warm_body, headers=headers, timeout=900)
        warmed.raise_for_status()
        takeover_s = time.perf_counter() - killed
        key = warmed.json()["warmed"][0]["artifact_id"]
        listing = httpx.get(f"{urls[0]}/v1/cache", headers=headers, timeout=60).json()["artifacts"]
        build_s = next(a["build_seconds"] for a in listing if a["artifact_id"] == key)

    one = [r["per_s"] for r in rounds if r["replicas"] == 1]
    three = [r["per_s"] for r in rounds if r["replicas"] == 3]
    results = {"statements_per_warm_resolve": per_resolve, "rounds": rounds,
               "throughput_ratio_3_to_1": (sum(three) / len(three)) / (sum(one) / len(one)),
               "takeover": {"kill_to_built_s": takeover_s, "survivor_build_s": build_s,
                            "lease_wait_s": takeover_s - build_s, "lease_s": LEASE_S}}
    table = Table("measure", "value", title="replicas on one store and one PostgreSQL database")
    table.add_row("PostgreSQL statements per warm resolve", f"{per_resolve:.2f}")
    table.add_row("warm resolves/s, 1 replica (mean of 3 rounds)", f"{sum(one) / len(one):.0f}")
    table.add_row("warm resolves/s, 3 replicas (mean of 3 rounds)", f"{sum(three) / len(three):.0f}")
    table.add_row("3 replicas / 1 replica", f"{results['throughput_ratio_3_to_1']:.2f}")
    table.add_row("kill -9 mid-build -> built by another replica", f"{takeover_s:.1f} s")
    table.add_row("   of which the survivor's own build", f"{build_s:.1f} s")
    console.print(table)
    finish("replicas", "replicas: warm throughput 1 vs 3, statements per resolve, takeover after kill -9",
           {"model": model, "quick": quick, "requests": requests, "clients": clients, "lease_s": LEASE_S, "warm_budget": WARM,
            "cold_config": COLD_CONFIG}, results, started, out_dir,
           ["all replicas, PostgreSQL and the clients share one machine: with few cores, 3 replicas compete with "
            "each other for them, so the ratio shows coordination overhead more than scaling"])


@app.command()
def rolling(model: Annotated[str, typer.Option(help="Served model of the default store.")] = "minilm-sentiment",
            devices: Annotated[int, typer.Option(help="Device threads resolving and downloading.")] = 4,
            pace_s: Annotated[float, typer.Option(help="Each device's pause between operations.")] = 0.2,
            model_every: Annotated[int, typer.Option(help="Each device downloads model.onnx every this many "
                                                     "operations (the manifest every time).")] = 5,
            steady_s: Annotated[float, typer.Option(help="Length of the steady phase (no restarts) before.")] = 60,
            database_url: Annotated[str | None, typer.Option(help="An empty PostgreSQL database (default: throwaway).")] = None,
            out_dir: Annotated[Path, typer.Option(help="Where result JSON goes.")] = RESULTS,
            quick: Annotated[bool, typer.Option("--quick", help="Smoke run (5 s steady phase, 2 devices), into results/quick/, marked smoke.")] = False) -> None:
    """Requests, failures, latency and waits during a rolling restart of 3 replicas, against a steady phase."""
    import tempfile

    from helpers.replicas import Balancer, Stats, start_replicas, stop_all

    started = time.perf_counter()
    if quick:
        steady_s, devices = min(steady_s, 5), min(devices, 2)
    body = {"model": model, "device": {"memory_available_mb": 300, "cpu_count": 2}, "budget": WARM}
    env = {"MLFS_OPERATOR_TOKEN": TOKEN, "MLFS_LEASE_S": str(LEASE_S), "MLFS_CLAIM_POLL_S": "0.2"}
    restarts = []
    with database(database_url) as db, temp_store() as store, tempfile.TemporaryDirectory() as logs:
        write_models(store, {model: load_models(store)[model]})
        replicas = start_replicas(store, db, Path(logs), 3, env, timeout_s=900)
        try:
            urls = [r.url for r in replicas]
            first = Stats()
            Balancer(urls, first, max_wait_s=900).fetch(body)  # the cold build of the warm config
            if first.failures:
                raise RuntimeError(f"the warm config could not be fetched: {first.failures}")
            phase = {"stats": Stats()}
            stop = threading.Event()

            def device() -> None:
                client = Balancer(urls, phase["stats"], max_wait_s=600)
                for i in itertools.count():
                    if stop.is_set():
                        break
                    client.stats = phase["stats"]  # the phase this operation counts in
                    client.fetch(body, model=i % model_every == 0)
                    time.sleep(pace_s)
                client.close()

            threads = [threading.Thread(target=device) for _ in range(devices)]
            for t in threads:
                t.start()
            time.sleep(steady_s)
            steady, phase["stats"] = phase["stats"], Stats()
            t_roll = time.perf_counter()
            for i, replica in enumerate(replicas):
                record: dict = {"replica": i, "signal": "SIGTERM"}
                if i == 0:  # stopped while it builds a cold config (through the operator's warm route)
                    built_before = artifact_count(db)
                    warm_in_background(replica.url, {"model": model, "configs": [COLD_CONFIG]})
                    with psycopg.connect(db, autocommit=True) as conn:
                        while conn.execute("SELECT 1 FROM build_claims WHERE owner LIKE %s",
                                           (f"%:{replica.proc.pid}:%",)).fetchone() is None:
                            time.sleep(0.05)
                    time.sleep(1.0)
                    record["stopped_mid_build"] = True
                t0 = time.perf_counter()
                record["exit_status"] = replica.stop(signal.SIGTERM, timeout=120)
                record["stop_s"] = time.perf_counter() - t0
                if i == 0:
                    with psycopg.connect(db, autocommit=True) as conn:
                        record["claims_left"] = conn.execute("SELECT count(*) FROM build_claims").fetchone()[0]
                    record["cold_build_published"] = artifact_count(db) > built_before  # finished while draining
                t0 = time.perf_counter()
                replica.start()
                replica.wait_ready(time.time() + 900)
                record["start_to_ready_s"] = time.perf_counter() - t0
                restarts.append(record)
                console.print(record)
            rolling_s = time.perf_counter() - t_roll
            stop.set()
            for t in threads:
                t.join(timeout=600)
            during = phase["stats"]
        finally:
            stop_all(replicas)
    results = {"steady": {**steady.summary(), "seconds": steady_s}, "rolling": {**during.summary(), "seconds": rolling_s},
               "restarts": restarts, "failure_examples": during.failures[:5] + steady.failures[:5]}
    table = Table("measure", "steady", "rolling restart", title=f"{devices} devices through a balancer over 3 replicas")
    for key in ("requests", "downloads", "failures", "failovers", "longest_retry_after_wait_s"):
        table.add_row(key, *(str(results[phase][key]) for phase in ("steady", "rolling")))
    rows = [(f"{kind} p50 / p99 / max ms", results["steady"]["latency"].get(kind, {}), results["rolling"]["latency"].get(kind, {}))
            for kind in ("resolve", "manifest", "model")]
    rows.append(("operation (resolve to verified) p50 / p99 / max ms", results["steady"]["operation"],
                 results["rolling"]["operation"]))
    for label, a, b in rows:
        table.add_row(label, *(f"{x.get('p50_ms')} / {x.get('p99_ms')} / {x.get('max_ms')}" for x in (a, b)))
    table.add_row("statuses", str(results["steady"]["statuses"]), str(results["rolling"]["statuses"]))
    console.print(table)
    finish("replicas-rolling", "replicas: a rolling restart (SIGTERM, one at a time) under load, against a steady phase",
           {"model": model, "quick": quick, "devices": devices, "pace_s": pace_s, "model_every": model_every, "lease_s": LEASE_S,
            "warm_budget": WARM, "cold_config": COLD_CONFIG}, results, started, out_dir,
           ["the balancer is the client-side model of README's nginx: next replica on a refused or cut connection "
            "and on 503; a device waits Retry-After on 202/503 (the last 503 when every replica answered it)",
            "all replicas, PostgreSQL and the devices share one machine: a restarting replica's model load competes "
            "with the others for the cores, so latency during the restart includes that"])


if __name__ == "__main__":
    app()
