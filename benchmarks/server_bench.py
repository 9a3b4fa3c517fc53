"""Delivery-server benchmarks, each printed as ratios measured side by side in one run.

- ``build``     cold artifact builds, broken down into slice, merge, export, validate and quantise.
- ``resolve``   warm ``POST /v1/resolve`` latency (p50/p99) and throughput at 1-64 concurrent clients, against
                a real ``mlfs serve`` process.
- ``download``  artifact download throughput from ``mlfs serve`` against a plain static file server
                (``python -m http.server``) serving the same file on the same machine, rounds interleaved.

Each writes ``benchmarks/results/server-<name>.json``. A temporary store is prepared like ``make serve`` does
(MiniLM and the shipped sentiment palette); the teacher must be prepared (``mlfs teacher prepare minilm``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import httpx
import typer
from bench_record import base_record, machine, write_result
from rich.console import Console
from rich.table import Table

from server.metrics import Metrics
from server.service import DeliveryService
from server.settings import Settings
from server.store import prepare_default_store

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "bench-operator-token"
CONFIGS = {  # the maxnet, a middle shape and the minnet of the MiniLM search space
    "max": {"layers": 6, "heads": 12, "ffn": 1536},
    "mid": {"layers": 4, "heads": 9, "ffn": 1152},
    "min": {"layers": 3, "heads": 6, "ffn": 768},
}

app = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False)
console = Console(width=None if sys.stdout.isatty() else 140)
ModelOpt = Annotated[str, typer.Option("--model", help="Served model of the default store.")]
OutOpt = Annotated[Path, typer.Option("--out-dir", help="Where result JSON goes.")]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextmanager
def temp_store() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mlfs-bench-store-"))
    try:
        prepare_default_store(root)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def process(args: list[str], ready_url: str, env: dict[str, str] | None = None, timeout: float = 300) -> Iterator[None]:
    """A server subprocess, up once ``ready_url`` answers 200; stopped (and reaped) afterwards."""
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{ready_url} not ready after {timeout} s")
            time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def mlfs_server(store: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlfs = str(Path(sys.executable).with_name("mlfs"))
    with process([mlfs, "serve", "--store", str(store), "--port", str(port)], f"{url}/readyz",
                 env={"MLFS_OPERATOR_TOKEN": TOKEN, "MLFS_BUILD_WAIT_S": "600"}):
        yield url


def finish(name: str, what: str, settings: dict, results: dict, started: float, out_dir: Path, notes: list[str]) -> None:
    import onnxruntime

    env = {**machine(), "onnxruntime": onnxruntime.__version__, "httpx": httpx.__version__}
    write_result(out_dir, f"server-{name}", base_record(f"server-{name}", what, settings, results, started, env, False, notes))


# ----- build ----------------------------------------------------------------------------------------------------
@app.command("build")
def build(model: ModelOpt = "minilm-sentiment", out_dir: OutOpt = RESULTS) -> None:
    """Cold builds of three shapes, fp32 and int8: where the seconds go."""
    from slicer import ExportError, SubnetConfig

    started = time.perf_counter()
    rows = []
    with temp_store() as store:
        svc = DeliveryService(Settings(store=store), Metrics())
        svc.load([model])
        loaded = svc.model(model)
        for label, spec in CONFIGS.items():
            cfg = SubnetConfig.parse(spec, loaded.dims)
            # Slicing alone (base weights, no adapters) is timed apart; merge = slice+merge - slice.
            t0 = time.perf_counter()
            loaded.opened.supernet.extract(cfg, merge=False)
            slice_s = time.perf_counter() - t0
            for precision in ("fp32", "int8"):
                t0 = time.perf_counter()
                try:
                    entry = svc.build(loaded, cfg, precision)
                except ExportError as err:  # the int8 quality gate said no: that is a result too
                    rows.append({"config": label, "shape": cfg.describe(), "precision": precision,
                                 "total_s": time.perf_counter() - t0, "rejected": str(err)})
                    console.print(f"{label} {precision}: rejected ({time.perf_counter() - t0:.1f} s): {err}")
                    continue
                total = time.perf_counter() - t0
                t = entry.record.info["timings"]
                phases = {"slice": slice_s, "merge": max(0.0, t["slice_merge_s"] - slice_s), "export": t["export_s"],
                          "validate": t["validate_s"], "quantise": t.get("quantize_s", 0.0)}
                phases["other"] = max(0.0, total - sum(phases.values()))  # hashing, fsync, rename, metadata
                rows.append({"config": label, "shape": cfg.describe(), "precision": precision, "total_s": total,
                             "phases_s": phases, "size_bytes": entry.record.size})
        svc.close()
    phase_names = next(r["phases_s"] for r in rows if "phases_s" in r)
    table = Table("config", "precision", "total s", *(f"{p} %" for p in phase_names), "MB",
                  title=f"cold build of {model}: share of the total per phase")
    for r in (r for r in rows if "rejected" not in r):
        table.add_row(f"{r['config']} {r['shape']}", r["precision"], f"{r['total_s']:.2f}",
                      *(f"{100 * v / r['total_s']:.1f}" for v in r["phases_s"].values()), f"{r['size_bytes'] / 2**20:.1f}")
    console.print(table)
    finish("build", "cold artifact build time by phase", {"model": model, "configs": CONFIGS}, {"rows": rows},
           started, out_dir, ["slice is extract(merge=False) timed separately; merge is the rest of extract"])


# ----- resolve --------------------------------------------------------------------------------------------------
async def hammer(url: str, body: dict, clients: int, requests: int) -> tuple[list[float], float]:
    """``clients`` concurrent loops sharing ``requests`` resolves; returns per-request ms and wall seconds."""
    times: list[float] = []
    remaining = requests

    async def client(session: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            r = await session.post(f"{url}/v1/resolve", json=body)
            times.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"resolve answered {r.status_code}: {r.text[:300]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return times, time.perf_counter() - t0


@app.command("resolve")
def resolve(model: ModelOpt = "minilm-sentiment", requests: Annotated[int, typer.Option(help="Resolves per level.")] = 400,
            out_dir: OutOpt = RESULTS) -> None:
    """Warm resolve latency and throughput at 1, 4, 16 and 64 concurrent clients."""
    started = time.perf_counter()
    body = {"model": model, "device": {"memory_available_mb": 300, "cpu_count": 2},
            "budget": {"max_memory_mb": 300, "seq_len": 64, "precision": "fp32"}}
    rows = []
    with temp_store() as store, mlfs_server(store) as url:
        first = httpx.post(f"{url}/v1/resolve", json=body, timeout=600)  # the cold build, not measured
        first.raise_for_status()
        asyncio.run(hammer(url, body, 4, 40))  # warm connections and code paths
        for clients in (1, 4, 16, 64):
            times, wall = asyncio.run(hammer(url, body, clients, requests))
            rows.append({"clients": clients, "requests": len(times), "p50_ms": statistics.median(times),
                         "p99_ms": percentile(times, 0.99), "per_second": len(times) / wall})
    base = rows[0]
    table = Table("clients", "p50 ms", "p99 ms", "resolves/s", "p50 / 1-client p50", "throughput / 1-client",
                  title=f"warm POST /v1/resolve ({model}; server and clients share this machine)")
    for r in (r for r in rows if "rejected" not in r):
        table.add_row(str(r["clients"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['per_second']:.0f}",
                      f"{r['p50_ms'] / base['p50_ms']:.2f}x", f"{r['per_second'] / base['per_second']:.2f}x")
    console.print(table)
    finish("resolve", "warm resolve latency at 1-64 concurrent clients", {"model": model, "body": body,
           "requests_per_level": requests, "artifact": first.json()["config"]}, {"rows": rows}, started, out_dir,
           [f"cpu_count={os.cpu_count()}: clients and server compete for the same cores"])


# ----- download -------------------------------------------------------------------------------------------------
def download(url: str) -> tuple[int, float]:
    size, t0 = 0, time.perf_counter()
    with httpx.stream("GET", url, timeout=600) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes(1 << 20):
            size += len(chunk)
    return size, time.perf_counter() - t0


@app.command("download")
def download_cmd(model: ModelOpt = "minilm-sentiment", rounds: Annotated[int, typer.Option(help="Downloads per server.")] = 8,
                 out_dir: OutOpt = RESULTS) -> None:
    """The full model's artifact from mlfs serve and from python -m http.server, interleaved."""
    started = time.perf_counter()
    body = {"model": model, "budget": {"max_memory_mb": 4000, "seq_len": 64, "precision": "fp32"}}
    with temp_store() as store, mlfs_server(store) as url:
        got = httpx.post(f"{url}/v1/resolve", json=body, timeout=600).json()
        folder = store / "cache" / got["artifact_id"]
        port = free_port()
        static = f"http://127.0.0.1:{port}"
        with process([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
                     f"{static}/manifest.json"):
            ours, plain = [], []
            for _ in range(rounds):
                for target, out in ((f"{url}{got['url']}", ours), (f"{static}/model.onnx", plain)):
                    size, seconds = download(target)
                    if size != got["size_bytes"]:
                        raise RuntimeError(f"{target}: {size} bytes, expected {got['size_bytes']}")
                    out.append(size / 2**20 / seconds)
    mb = got["size_bytes"] / 2**20
    result = {"size_mb": mb, "mlfs_mb_s": statistics.median(ours), "static_mb_s": statistics.median(plain),
              "all_mlfs_mb_s": ours, "all_static_mb_s": plain}
    result["ratio"] = result["mlfs_mb_s"] / result["static_mb_s"]
    table = Table("server", "median MB/s", "min", "max", title=f"download of a {mb:.1f} MB artifact, {rounds} rounds each")
    table.add_row("mlfs serve", f"{result['mlfs_mb_s']:.0f}", f"{min(ours):.0f}", f"{max(ours):.0f}")
    table.add_row("python -m http.server", f"{result['static_mb_s']:.0f}", f"{min(plain):.0f}", f"{max(plain):.0f}")
    console.print(table)
    console.print(f"mlfs serve / static server throughput: {result['ratio']:.2f}x")
    finish("download", "artifact download throughput vs a static file server", {"model": model, "rounds": rounds,
           "config": got["config"]}, result, started, out_dir, [])


if __name__ == "__main__":
    app()
