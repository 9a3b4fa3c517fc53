"""Replicas on one store and one PostgreSQL database (README "Deployment"), measured side by side in one run:

- warm ``POST /v1/resolve`` throughput with the same clients sent to 1 replica or spread over 3 (rounds
  interleaved 1, 3, 1, 3);
- PostgreSQL statements per warm resolve (transactions committed in the database per resolve: every statement
  runs in autocommit, so one transaction is one round trip);
- takeover: a replica is killed (SIGKILL) while it builds; the time from the kill until another replica has
  built the artifact, against that replica's own build time (the difference is the lease wait).

Writes ``benchmarks/results/server-replicas.json``. Needs the MiniLM teacher prepared and either ``--database-url`` (an
empty database) or PostgreSQL's binaries on PATH (a throwaway cluster is started, as in the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
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
from server_bench import RESULTS, TOKEN, finish, free_port, hammer, temp_store

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


class Replica:
    def __init__(self, store: Path, database_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MLFS_DATABASE_URL": database_url, "MLFS_OPERATOR_TOKEN": TOKEN,
               "MLFS_BUILD_WAIT_S": "600", "MLFS_LEASE_S": str(LEASE_S), "MLFS_CLAIM_POLL_S": "0.2"}
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--store", str(store), "--port",
                                      str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait(self, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica on port {self.port} exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"replica on port {self.port} not ready after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def commits(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


async def spread(urls: list[str], body: dict, clients: int, requests: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    await asyncio.gather(*(hammer(u, body, clients // len(urls), requests // len(urls)) for u in urls))
    return requests // len(urls) * len(urls), time.perf_counter() - t0


@app.command()
def main(model: Annotated[str, typer.Option(help="Served model of the default store.")] = "minilm-sentiment",
         requests: Annotated[int, typer.Option(help="Resolves per round.")] = 600,
         clients: Annotated[int, typer.Option(help="Concurrent clients (divisible by 3).")] = 24,
         database_url: Annotated[str | None, typer.Option(help="An empty PostgreSQL database (default: throwaway).")] = None,
         out_dir: Annotated[Path, typer.Option(help="Where result JSON goes.")] = RESULTS,
         quick: Annotated[bool, typer.Option("--quick", help="Smoke run (few resolves per round), into results/quick/, marked smoke.")] = False) -> None:
    started = time.perf_counter()
    requests = min(requests, 48) if quick else requests
    body = {"model": model, "device": {"memory_available_mb": 300, "cpu_count": 2}, "budget": WARM}
    with database(database_url) as db, temp_store() as store, ExitStack() as stack:
        write_models(store, {model: load_models(store)[model]})  # serve only the measured model: faster starts
        replicas = []
        for _ in range(3):  # one at a time: three model loads at once only slow each other down
            replica = Replica(store, db)
            stack.callback(replica.stop)
            replica.wait()
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
        def doomed_warm() -> None:
            with contextlib.suppress(httpx.TransportError):  # the replica is killed under it
                httpx.post(f"{victim.url}/v1/cache/warm", json=warm_body, headers=headers, timeout=900)

        threading.Thread(target=doomed_warm, daemon=True).start()
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


if __name__ == "__main__":
    app()
