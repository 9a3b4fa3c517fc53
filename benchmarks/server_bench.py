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
import dataclasses
import json
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
from bench_record import base_record, machine, quick_out_dir, write_result
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
QuickOpt = Annotated[bool, typer.Option("--quick", help="Smoke run (a few rounds, the minnet only), written to results/quick/ and marked smoke.")]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextmanager
def temp_store() -> Iterator[Path]:
    from slicer import CACHE_SUBDIR, data_home

    root = Path(tempfile.mkdtemp(prefix="mlfs-bench-store-"))
    try:
        prepare_default_store(root)
        # importance orders the CLI already computed (keyed by base, method and calibration tokens): loading
        # SmolLM2 would otherwise re-rank it, which is not what these benchmarks measure
        if (data_home() / CACHE_SUBDIR).is_dir():
            shutil.copytree(data_home() / CACHE_SUBDIR, root / CACHE_SUBDIR, dirs_exist_ok=True)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def process(args: list[str], ready_url: str, env: dict[str, str] | None = None, timeout: float = 300) -> Iterator[subprocess.Popen]:
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
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def mlfs_server(store: Path, pid: list[int] | None = None) -> Iterator[str]:
    """``mlfs serve`` on ``store``; yields its URL (its process id is appended to ``pid`` when given)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlfs = str(Path(sys.executable).with_name("mlfs"))
    with process([mlfs, "serve", "--store", str(store), "--port", str(port)], f"{url}/readyz",
                 env={"MLFS_OPERATOR_TOKEN": TOKEN, "MLFS_BUILD_WAIT_S": "600"}) as proc:
        if pid is not None:
            pid.append(proc.pid)
        yield url


def finish(name: str, what: str, settings: dict, results: dict, started: float, out_dir: Path, notes: list[str]) -> None:
    """The result JSON (a ``--quick`` run's, ``settings["quick"]``, is marked smoke) and its figure."""
    import onnxruntime

    env = {**machine(), "onnxruntime": onnxruntime.__version__, "httpx": httpx.__version__}
    write_result(quick_out_dir(out_dir, settings.get("quick", False)), f"server-{name}",
                 base_record(f"server-{name}", what, settings, results, started, env, settings.get("quick", False), notes))


# ----- build ----------------------------------------------------------------------------------------------------
BUILDERS = {"direct-fused": ("direct", "fused"), "direct-plain": ("direct", "plain"), "torch": ("torch", "plain")}
DECODER_SLICE = {"layers": 10}  # SmolLM2: 10 of 30 layers, every head and FFN neuron, with the key/value cache


def cold_build(svc: DeliveryService, loaded, cfg, precision: str) -> dict:
    """One cold build, request to cached artifact (the entry is dropped first); total and phases in seconds."""
    svc.cache.drop(svc.artifact_id(loaded, cfg, precision))
    t0, c0 = time.perf_counter(), time.process_time()
    entry = svc.build(loaded, cfg, precision)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    t = entry.record.info["timings"]
    phases = {"slice_merge": t["slice_merge_s"], "graph": t["graph_s"], "validate": t["validate_s"],
              "quantise": t.get("quantize_s", 0.0)}
    phases["hash_write_other"] = max(0.0, total - sum(phases.values()))
    # the PyTorch reference runs beside the graph write (not a phase of its own: it overlaps "graph")
    return {"total_s": total, "cpu_s": cpu, "phases_s": phases, "reference_overlapped_s": t.get("reference_s"),
            "validate_share": phases["validate"] / total, "size_bytes": entry.record.size, "path": entry.path}


def interleaved_latency(runners: dict, runs: int) -> dict[str, dict[str, float]]:
    """Median and 10th-percentile ms per runner over ``runs`` passes each: ort_latency.py's blocks, rotated over the
    runners with a pause before each block, so PyTorch's spinning OpenMP workers do not slow the next runner."""
    from ort_latency import BLOCK, GAP_S, summary, time_blocks

    times = time_blocks(runners, max(1, runs // BLOCK), min(BLOCK, runs), GAP_S)
    return {k: summary(v) for k, v in times.items()}


def encoder_runners(paths: dict[str, Path], subnet, seq: int = 128) -> dict:
    """onnxruntime sessions (2 threads) of each artifact and PyTorch eager of the same subnet, batch 1."""
    import numpy as np
    import torch

    from slicer.onnx.validate import session  # the same sessions validation uses (threads set, CPU provider)

    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 20000, (1, seq)), "attention_mask": np.ones((1, seq), np.int64),
            "token_type_ids": np.zeros((1, seq), np.int64)}
    runners = {}
    for name, path in paths.items():
        sess = session(path, threads=2)
        runners[name] = lambda sess=sess: sess.run(None, feed)
    torch_feed = {k: torch.from_numpy(v) for k, v in feed.items()}

    def eager():
        with torch.inference_mode():
            subnet(**torch_feed)

    runners["pytorch-eager"] = eager
    return runners


@app.command("build")
def build(model: ModelOpt = "minilm-sentiment", decoder: Annotated[str, typer.Option(help="Decoder model ('' to skip).")] = "smollm2",
          configs: Annotated[str, typer.Option(help="Encoder configs to build, of: " + ", ".join(CONFIGS))] = ",".join(CONFIGS),
          rounds: Annotated[int, typer.Option(help="Cold builds per direct variant (the exporter: 1).")] = 3,
          runs: Annotated[int, typer.Option(help="Latency runs per artifact.")] = 40,
          out_dir: OutOpt = RESULTS, quick: QuickOpt = False) -> None:
    """Cold builds direct vs torch.onnx.export side by side, per phase; int8 gate; inference latency."""
    import torch

    from slicer import ExportError, SubnetConfig

    torch.set_num_threads(2)
    started = time.perf_counter()
    if quick:
        configs, decoder, rounds, runs = "min", "", 1, 5
    rows, latency, int8_rows, decoder_rows = [], {}, [], []
    with temp_store() as store:
        services = {}
        for name, (builder, mode) in BUILDERS.items():
            services[name] = DeliveryService(Settings(store=store, graph_builder=builder, graph_mode=mode), Metrics())
        first = services["direct-fused"]
        t0 = time.perf_counter()
        first.load([model] + ([decoder] if decoder else []))
        per_process = {"load_s": time.perf_counter() - t0, "warm_up": first.warm_up}  # paid once, at server start
        console.print(f"per process (at load): build warm-up {first.warm_up}")
        for svc in services.values():
            svc.models = first.models  # one loaded model (and one validation set) shared by every variant
        loaded = first.model(model)
        for label in configs.split(","):
            cfg = SubnetConfig.parse(CONFIGS[label], loaded.dims)
            row = {"config": label, "shape": cfg.describe(), "builds": {}}
            for name, svc in services.items():
                builds = [cold_build(svc, loaded, cfg, "fp32") for _ in range(1 if name == "torch" else rounds)]
                best = min(builds, key=lambda b: b["total_s"])
                row["builds"][name] = {"total_s": [b["total_s"] for b in builds], "median_s": statistics.median(b["total_s"] for b in builds),
                                       "validate_share": statistics.median(b["validate_share"] for b in builds),
                                       "reference_overlapped_s": statistics.median(b["reference_overlapped_s"] or 0.0 for b in builds),
                                       "cpu_s": [b["cpu_s"] for b in builds], "median_cpu_s": statistics.median(b["cpu_s"] for b in builds),
                                       "phases_s_of_median": sorted(builds, key=lambda b: b["total_s"])[len(builds) // 2]["phases_s"],
                                       "size_bytes": best["size_bytes"]}
                row.setdefault("paths", {})[name] = best["path"] / "model.onnx"
                console.print(f"{label} {name}: {row['builds'][name]['median_s']:.2f} s (all: "
                              f"{', '.join(f'{x:.2f}' for x in row['builds'][name]['total_s'])}; validate "
                              f"{100 * row['builds'][name]['validate_share']:.0f} % of the build; load {os.getloadavg()[0]:.1f})")
            torch_s = row["builds"]["torch"]["median_s"]
            row["ratio_vs_torch"] = {n: b["median_s"] / torch_s for n, b in row["builds"].items()}
            row["cpu_ratio_vs_torch"] = {n: b["median_cpu_s"] / row["builds"]["torch"]["median_cpu_s"] for n, b in row["builds"].items()}
            for name, svc in services.items():
                if name == "torch":
                    continue
                t0 = time.perf_counter()
                try:
                    entry = svc.build(loaded, cfg, "int8")
                    q = entry.record.info
                    row.setdefault("paths", {})[f"{name}-int8"] = entry.path / "model.onnx"
                    int8_rows.append({"config": label, "variant": name, "accepted": True, "total_s": time.perf_counter() - t0,
                                      "size_bytes": entry.record.size,
                                      "size_ratio": entry.record.size / row["builds"][name]["size_bytes"],
                                      "quality": json.loads((entry.path / "manifest.json").read_text())["int8_quality"],
                                      "timings": q["timings"]})
                except ExportError as err:  # the gate said no: that is a result too
                    int8_rows.append({"config": label, "variant": name, "accepted": False, "total_s": time.perf_counter() - t0,
                                      "rejected": str(err)[:600]})
            subnet = loaded.opened.supernet.extract(cfg)
            paths = {k: v for k, v in row.pop("paths").items()}
            latency[label] = interleaved_latency(encoder_runners(paths, subnet), runs)
            rows.append(row)
        if decoder:
            dec = first.model(decoder)
            cfg = SubnetConfig.parse(DECODER_SLICE, dec.dims)
            row = {"config": "decoder", "model": decoder, "shape": cfg.describe(), "builds": {}}
            for name in ("direct-fused", "direct-plain", "torch"):
                b = cold_build(services[name], dec, cfg, "fp32")
                manifest = json.loads((b.pop("path") / "manifest.json").read_text())
                parity = manifest["parity"]
                row["builds"][name] = {**b, "parity": {"judged_against": parity["judged_against"],
                                                       "max_abs_diff_logits": parity["max_abs_diff"]["logits"],
                                                       "allowed_logits": parity["allowed"]["logits"]}}
                console.print(f"{decoder} {name}: {b['total_s']:.2f} s")
            row["ratio_vs_torch"] = {n: b["total_s"] / row["builds"]["torch"]["total_s"] for n, b in row["builds"].items()}
            row["cpu_ratio_vs_torch"] = {n: b["cpu_s"] / row["builds"]["torch"]["cpu_s"] for n, b in row["builds"].items()}
            decoder_rows.append(row)
        for record in first.meta.list_artifacts():  # the cold resolve below starts from an empty cache
            first.cache.drop(record.key)
        for svc in services.values():
            svc.close()
        cold = cold_resolve(store, model)

    table = Table("config", "variant", "cold build s", "x torch", "CPU s", "CPU x torch", *PHASES, "MB",
                  title=f"cold build of {model} (request to cached artifact, median; phases in wall seconds)")
    for r in rows + decoder_rows:
        for name, b in r["builds"].items():
            phases = b.get("phases_s_of_median") or b["phases_s"]
            total = b.get("median_s", b.get("total_s"))
            table.add_row(r["shape"], name, f"{total:.2f}", f"{r['ratio_vs_torch'][name]:.3f}",
                          f"{b.get('median_cpu_s', b.get('cpu_s')):.2f}", f"{r['cpu_ratio_vs_torch'][name]:.3f}",
                          *(f"{phases[p]:.2f}" for p in PHASES), f"{b['size_bytes'] / 2**20:.1f}")
    console.print(table)
    lat = Table("config", *next(iter(latency.values())).keys(), title="onnxruntime / PyTorch latency, batch 1, seq 128, 2 threads (median ms)")
    for label, values in latency.items():
        lat.add_row(label, *(f"{v['median_ms']:.1f}" for v in values.values()))
    console.print(lat)
    for label, values in latency.items():
        base = values["pytorch-eager"]["median_ms"]
        console.print(f"{label}: " + ", ".join(f"{k} {v['median_ms'] / base:.2f}x eager" for k, v in values.items() if k != "pytorch-eager"))
    if "min" in latency and "max" in latency:
        console.print(f"minnet / maxnet (the teacher's shape), direct-fused: {latency['min']['direct-fused']['median_ms'] / latency['max']['direct-fused']['median_ms']:.2f}x")
    for r in int8_rows:
        q = r.get("quality") or {}
        console.print(f"int8 {r['config']} {r['variant']}: " + (f"accepted ({q.get('criterion')}), drop {q.get('accuracy_drop_points', float('nan')):.2f} points "
                      f"on {q.get('examples')} dev examples, agreement {q.get('argmax_agreement', float('nan')):.4f}, size {r['size_ratio']:.2f}x fp32"
                      if r["accepted"] else f"rejected: {r['rejected'][:200]}"))
    console.print(f"cold POST /v1/resolve at the default build_wait_s: {cold}")
    console.print(f"per process, paid at server start: {per_process}; the first build of the process is the first "
                  "figure of the first row's direct-fused builds")
    finish("build", "cold artifact builds: direct graph builder vs torch.onnx.export, per phase; int8 gate; latency",
           {"model": model, "quick": quick, "configs": {k: CONFIGS[k] for k in configs.split(",")}, "decoder": decoder, "decoder_slice": DECODER_SLICE, "rounds": rounds, "runs": runs},
           {"rows": rows, "decoder": decoder_rows, "int8": int8_rows, "latency": latency, "cold_resolve": cold,
            "per_process": per_process, "load_average": os.getloadavg()}, started, out_dir,
           ["timed on a shared 2-core machine: compare ratios from this run, not absolute seconds",
            "cold build = DeliveryService.build after dropping the entry: slice+merge, graph, validate, (quantise), hash, rename, metadata",
            "per build vs per process: the build warm-up (onnxruntime and PyTorch start-up on the smallest config) is paid "
            "once at load (results.per_process); total_s lists every build in order, the first one being the process's first build",
            "validate = after the graph is written: session, onnxruntime runs, and whatever of the PyTorch reference "
            "(run beside the graph write, reference_overlapped_s) was not done yet",
            "cpu_s = process CPU seconds during the build (all its threads): the work, whatever else holds the cores",
            "latency: blocks of passes rotated across artifacts and PyTorch eager (inference_mode), a pause before each (ort_latency.py); the maxnet is the teacher's shape (all layers, heads, FFN)"])


PHASES = ("slice_merge", "graph", "validate", "quantise", "hash_write_other")


def cold_resolve(store: Path, model: str) -> dict:
    """A fresh server serving only ``model`` (a new store beside ``store``, empty cache) at the default
    build_wait_s: does the first resolve answer 200 within one request?"""
    from server.store import load_models, write_models

    served = load_models(store)[model]
    root = store.parent / f"{store.name}-cold"
    root.mkdir()
    if served.adapters is not None:
        shutil.copytree(served.adapters, root / "adapters" / served.adapters.name)
        served = dataclasses.replace(served, adapters=root / "adapters" / served.adapters.name)
    write_models(root, {model: served})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlfs = str(Path(sys.executable).with_name("mlfs"))
    body = {"model": model, "device": {"memory_available_mb": 300, "cpu_count": 2},
            "budget": {"max_memory_mb": 300, "seq_len": 64, "precision": "fp32"}}
    try:
        with process([mlfs, "serve", "--store", str(root), "--port", str(port)], f"{url}/readyz",
                     env={"MLFS_OPERATOR_TOKEN": TOKEN}, timeout=900):
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/v1/resolve", json=body, timeout=600)
            return {"status": r.status_code, "seconds": time.perf_counter() - t0,
                    "config": r.json().get("config") if r.status_code == 200 else None,
                    "build_wait_s": Settings().build_wait_s}
    finally:
        shutil.rmtree(root, ignore_errors=True)


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


# The floor under any resolve: the same HTTP stack (uvicorn + FastAPI, JSON in and out) doing no work.
TRIVIAL_APP = """
import os, sys
import uvicorn
from fastapi import FastAPI, Request, Response
app = FastAPI()
ANSWER = os.environ["TRIVIAL_ANSWER"].encode()  # encoded once: no per-request serialisation
@app.get("/readyz")
async def ready():
    return {"status": "ok"}
@app.post("/v1/resolve")
async def resolve(request: Request):
    await request.body()
    return Response(ANSWER, media_type="application/json")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@contextmanager
def trivial_server(answer: dict, pid: list[int] | None = None) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process([sys.executable, "-c", TRIVIAL_APP, str(port)], f"{url}/readyz", env={"TRIVIAL_ANSWER": json.dumps(answer)}) as proc:
        if pid is not None:
            pid.append(proc.pid)
        yield url


def server_cpu(pid: int, url: str, body: dict, clients: int, requests: int) -> dict[str, float]:
    """CPU seconds the server process (all its threads) spent on ``requests`` resolves at ``clients`` concurrent
    clients, per request, with the throughput of the same run."""
    import psutil

    server = psutil.Process(pid)
    before = server.cpu_times()
    times, wall = asyncio.run(hammer(url, body, clients, requests))
    after = server.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return {"cpu_ms_per_request": 1000 * cpu / len(times), "per_second": len(times) / wall,
            "p50_ms": statistics.median(times), "requests": len(times)}


@app.command("resolve")
def resolve(model: ModelOpt = "minilm-sentiment", requests: Annotated[int, typer.Option(help="Resolves per level.")] = 400,
            cpu_rounds: Annotated[int, typer.Option(help="Rounds of the CPU comparison (each: every server, 64 clients).")] = 3,
            out_dir: OutOpt = RESULTS, quick: QuickOpt = False) -> None:
    """Warm resolve latency and throughput at 1, 4, 16 and 64 concurrent clients, beside a trivial FastAPI
    endpoint (same body, the same answer, no work) on the same machine, levels interleaved; then the server's CPU
    per warm resolve against that endpoint and one that also parses the body as a ``ResolveRequest``."""
    started = time.perf_counter()
    requests = min(requests, 64) if quick else requests
    body = {"model": model, "device": {"memory_available_mb": 300, "cpu_count": 2},
            "budget": {"max_memory_mb": 300, "seq_len": 64, "precision": "fp32"}}
    rows, trivial_rows, pids = [], [], []
    cpu: dict[str, list[dict]] = {"mlfs": [], "trivial": [], "trivial-parsing": []}
    with temp_store() as store, mlfs_server(store, pids) as url:
        first = httpx.post(f"{url}/v1/resolve", json=body, timeout=600)  # the cold build, not measured
        first.raise_for_status()
        (store / "trivial-answer.json").write_text(json.dumps(first.json()))
        parsing_port = free_port()
        parsing = f"http://127.0.0.1:{parsing_port}"
        with trivial_server(first.json(), pids) as trivial, process(
                [sys.executable, str(Path(__file__).with_name("trivial_resolve_app.py")), str(parsing_port),
                 str(store / "trivial-answer.json")], f"{parsing}/readyz") as parsing_proc:
            for target in (url, trivial):
                asyncio.run(hammer(target, body, 4, 40))  # warm connections and code paths
            pairs = ((url, rows), (trivial, trivial_rows))
            for level, clients in enumerate((1, 4, 16, 64)):
                for target, out in pairs if level % 2 == 0 else pairs[::-1]:  # who goes first alternates
                    times, wall = asyncio.run(hammer(target, body, clients, requests))
                    out.append({"clients": clients, "requests": len(times), "p50_ms": statistics.median(times),
                                "p99_ms": percentile(times, 0.99), "per_second": len(times) / wall})
            asyncio.run(hammer(parsing, body, 4, 40))
            servers = {"mlfs": (pids[0], url), "trivial": (pids[1], trivial), "trivial-parsing": (parsing_proc.pid, parsing)}
            for _ in range(cpu_rounds):  # rounds interleaved
                for name, (pid, target) in servers.items():
                    cpu[name].append(server_cpu(pid, target, body, 64, requests))
    base = rows[0]
    table = Table("clients", "p50 ms", "p99 ms", "resolves/s", "p50 / 1-client p50", "throughput / 1-client",
                  title=f"warm POST /v1/resolve ({model}; server and clients share this machine)")
    for r in (r for r in rows if "rejected" not in r):
        table.add_row(str(r["clients"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['per_second']:.0f}",
                      f"{r['p50_ms'] / base['p50_ms']:.2f}x", f"{r['per_second'] / base['per_second']:.2f}x")
    console.print(table)
    for r, t in zip(rows, trivial_rows):
        console.print(f"{r['clients']:>2} clients: trivial FastAPI p50 {t['p50_ms']:.2f} ms, {t['per_second']:.0f}/s; "
                      f"mlfs throughput {r['per_second'] / t['per_second']:.2f}x the trivial endpoint's")
    summary = {k: {m: statistics.median(r[m] for r in v) for m in ("cpu_ms_per_request", "per_second", "p50_ms")}
               for k, v in cpu.items()}
    for name in ("trivial", "trivial-parsing"):
        summary[f"cpu_ratio_vs_{name}"] = summary["mlfs"]["cpu_ms_per_request"] / summary[name]["cpu_ms_per_request"]
        console.print(f"server CPU per warm resolve at 64 clients: mlfs {summary['mlfs']['cpu_ms_per_request']:.2f} ms, "
                      f"{name} {summary[name]['cpu_ms_per_request']:.2f} ms ({summary[f'cpu_ratio_vs_{name}']:.2f}x); "
                      f"resolves/s {summary['mlfs']['per_second']:.0f} vs {summary[name]['per_second']:.0f}; load {os.getloadavg()[0]:.1f}")
    finish("resolve", "warm resolve latency at 1-64 concurrent clients; server CPU per resolve vs trivial endpoints",
           {"model": model, "quick": quick, "body": body, "requests_per_level": requests, "cpu_rounds": cpu_rounds,
            "artifact": first.json()["config"]}, {"rows": rows, "baseline": "trivial FastAPI endpoint (uvicorn, async, reads the body, answers pre-encoded bytes)",
           "baseline_rows": trivial_rows,
           "throughput_vs_baseline": [r["per_second"] / t["per_second"] for r, t in zip(rows, trivial_rows)],
           "cpu_vs_trivial": {"rounds": cpu, **summary}, "load_average": os.getloadavg()},
           started, out_dir,
           [f"cpu_count={os.cpu_count()}: clients and server compete for the same cores",
            "cpu_ms_per_request: the server process's user+system CPU (psutil) over a run of requests at 64 clients; "
            "trivial: the no-work endpoint above; trivial-parsing (benchmarks/trivial_resolve_app.py) parses the same "
            "ResolveRequest and answers a fixed ResolveResponse under mlfs serve's uvicorn settings; rounds interleaved"])


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
                 out_dir: OutOpt = RESULTS, quick: QuickOpt = False) -> None:
    """The full model's artifact from mlfs serve and from python -m http.server, interleaved."""
    started = time.perf_counter()
    rounds = 1 if quick else rounds
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
    finish("download", "artifact download throughput vs a static file server", {"model": model, "quick": quick, "rounds": rounds,
           "config": got["config"]}, result, started, out_dir, [])


if __name__ == "__main__":
    app()
