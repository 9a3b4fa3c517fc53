"""Client SDK hot-swap benchmark (issue 10): per-call latency while a device swaps down and back up under a
steady request stream, against a real ``mlfs serve`` (MiniLM and the shipped sentiment palette).

Measured in one run:
- p50/p99 of ``predict`` before, during and after each swap; calls failed (target 0);
- time from the monitor's decision to the swap, and the swap strategy (``sequential`` when both models do not
  fit the simulated memory, ``overlap`` when they do);
- peak RSS of this process during each swap, beside the steady RSS before it;
- the first ``predict`` of a fresh device against a warm server (resolve + download + load) beside downloading
  the artifact's files alone from the same server (rounds interleaved).

Targets: 0 failed calls; p99 during a swap <= 1.5x the steady p99 of the slower model; first predict <= 2x the
download alone. Writes ``benchmarks/results/client-swap.json`` (+ ``client-swap.png``, drawn by plots.py).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import psutil
import typer
from bench_record import base_record, machine, quick_out_dir, write_result
from rich.console import Console
from rich.table import Table
from server_bench import TOKEN, free_port, percentile, process, temp_store

from client_sdk import Budget, Client, SimulatedProbe, SwapPolicy

RESULTS = Path(__file__).resolve().parent / "results"
TEXT = "a quietly moving film with two fine performances"
console = Console(width=None if sys.stdout.isatty() else 140)
app = typer.Typer(help=__doc__.split("\n\n")[0], pretty_exceptions_enable=False, add_completion=False)


@contextmanager
def serving(store: Path, model: str, nice: int, cut_down: bool = True) -> Iterator[str]:
    """``mlfs serve`` over the default store cut down to ``model`` (start-up is not what is measured here), at
    ``nice``: a device's server is another machine; here it shares the device's cores, and at a lower priority
    it takes less of the CPU the measured calls need (0 keeps the old setting: server and device compete)."""
    path = store / "models.json"
    if cut_down:
        path.write_text(json.dumps({"models": [m for m in json.loads(path.read_text())["models"] if m["name"] == model]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # python -m server.cli: the same command as `mlfs`, without depending on how the console script was installed
    command = [sys.executable, "-m", "server.cli", "serve", "--store", str(store), "--port", str(port)]
    with process((["nice", "-n", str(nice)] if nice else []) + command, f"{url}/readyz",
                 env={"MLFS_OPERATOR_TOKEN": TOKEN, "MLFS_BUILD_WAIT_S": "1800"}, timeout=900):
        yield url


@contextmanager
def bench_store(store: Path | None) -> Iterator[Path]:
    if store is not None:  # an existing store (its artifacts already built): reruns skip the builds
        yield store
        return
    with temp_store() as root:
        yield root


def resolve(url: str, model: str, memory_mb: float | None) -> dict[str, Any]:
    budget: dict[str, Any] = {"precision": "fp32"}
    if memory_mb is not None:
        budget["max_memory_mb"] = memory_mb
    r = httpx.post(f"{url}/v1/resolve", json={"model": model, "budget": budget}, timeout=1800)
    r.raise_for_status()
    return r.json()


def stats(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"calls": 0}
    return {"calls": len(values), "p50_ms": round(statistics.median(values), 3), "p99_ms": round(percentile(values, 0.99), 3)}


def first_predict_vs_download(url: str, model: str, big: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Fresh device caches, interleaved with plain downloads of the same artifact's files."""
    manifest = httpx.get(f"{url}{big['manifest_url']}").json()
    names = list(manifest["files"])
    first, plain, parts = [], [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            client = Client(url, model, probe=SimulatedProbe(100000), cache_dir=cache, threads=1, count_loaded_model=False,
                            budget=Budget(precision="fp32"))
            client.predict([TEXT])
            first.append(time.perf_counter() - start)
            steps = {k: round(v, 3) for e in client.events.history for k, v in e.timings.items() if k != "decision_to_swap_s"}
            parts.append(steps)
            client.close()
        with httpx.Client(base_url=url) as http:  # made before the clock starts: its CA bundle load is not the download
            start = time.perf_counter()
            http.get(f"{big['manifest_url']}").raise_for_status()
            for name in names:
                http.get(f"/v1/artifacts/{big['artifact_id']}/files/{name}").raise_for_status()
            plain.append(time.perf_counter() - start)
    return {"first_predict_s": [round(x, 3) for x in first], "download_only_s": [round(x, 3) for x in plain],
            "first_predict_steps_s": parts,
            "median_ratio": round(statistics.median(first) / statistics.median(plain), 2),
            "artifact_bytes": sum(f["size"] for f in manifest["files"].values())}


def swap_run(url: str, model: str, big: dict[str, Any], small_mb: float, steady_s: float, strategy: str) -> dict[str, Any]:
    probe = SimulatedProbe(100000, cpu_count=1)
    with tempfile.TemporaryDirectory() as cache:
        client = Client(url, model, probe=probe, cache_dir=cache, threads=1, count_loaded_model=False,
                        budget=Budget(precision="fp32"), swap_strategy=strategy)  # type: ignore[arg-type]
        client.load()
        calls: list[tuple[float, float, str | None]] = []  # (start, ms, artifact id or None when it failed)
        rss: list[tuple[float, int]] = []
        stop = threading.Event()
        me = psutil.Process()
        t0 = time.perf_counter()

        def caller() -> None:
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    answer = client.predict([TEXT])[0].artifact_id
                except Exception:
                    answer = None
                calls.append((start - t0, (time.perf_counter() - start) * 1000, answer))

        def sampler() -> None:
            while not stop.is_set():
                rss.append((time.perf_counter() - t0, me.memory_info().rss))
                time.sleep(0.01)

        threads = [threading.Thread(target=caller), threading.Thread(target=sampler)]
        for t in threads:
            t.start()
        swaps, decisions = [], []
        client.events.subscribe(lambda e: (swaps if e.kind == "swap" else decisions if e.kind == "decision" else []).append(
            (time.perf_counter() - t0, e)))
        client.start_monitor(SwapPolicy(interval_s=0.1, cooldown_s=0.0, up_polls=1))
        try:
            time.sleep(steady_s)
            probe.set(memory_available_mb=small_mb)
            deadline = time.time() + 600
            while not swaps and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(steady_s)
            probe.set(memory_available_mb=100000)
            while len(swaps) < 2 and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(steady_s)
        finally:
            stop.set()
            for t in threads:
                t.join()
            client.close()

    failed = sum(1 for c in calls if c[2] is None)
    moves = []
    for (at, event), direction in zip(swaps, ("down", "up")):
        decided = max((t for t, d in decisions if t <= at and d.data.get("direction") == direction), default=at)
        window = [c[1] for c in calls if decided <= c[0] <= at]
        before_rss = [r for t, r in rss if decided - 1.0 <= t < decided]
        during_rss = [r for t, r in rss if decided <= t <= at + 0.2]
        moves.append({"direction": direction, "strategy": event.data["strategy"], "from": event.data["from_config"],
                      "to": event.data["config"], "decision_to_swap_s": round(at - decided, 3),
                      "during": stats(window),
                      "rss_before_mb": round(max(before_rss, default=0) / 2**20, 1),
                      "rss_peak_during_mb": round(max(during_rss, default=0) / 2**20, 1)})
    bounds = [0.0] + [t for m, (at, _) in zip(moves, swaps) for t in (at - m["decision_to_swap_s"], at)] + [float("inf")]
    phases = {}
    names = ["steady_big_before", "swap_down", "steady_small", "swap_up", "steady_big_after"]
    for i, name in enumerate(names[: len(bounds) - 1]):
        phases[name] = stats([c[1] for c in calls if bounds[i] <= c[0] < bounds[i + 1] and c[2] is not None])
    slower_p99 = max(phases.get("steady_big_before", {}).get("p99_ms", 0), phases.get("steady_small", {}).get("p99_ms", 0),
                     phases.get("steady_big_after", {}).get("p99_ms", 0))
    return {"strategy_setting": strategy, "calls": len(calls), "failed": failed, "swaps": moves, "phases": phases,
            "steady_p99_slower_model_ms": slower_p99,
            "swap_p99_over_steady_p99": [round(m["during"].get("p99_ms", 0) / slower_p99, 2) if slower_p99 else None
                                         for m in moves],
            "series": {"t_s": [round(c[0], 4) for c in calls], "ms": [round(c[1], 3) for c in calls],
                       "artifact": [(c[2] or "failed")[:12] for c in calls],
                       "swap_at_s": [round(at, 3) for at, _ in swaps],
                       "decision_at_s": [round(at - m["decision_to_swap_s"], 3) for m, (at, _) in zip(moves, swaps)]}}


@app.command()
def main(model: Annotated[str, typer.Option(help="served model of the default store")] = "minilm-sentiment",
         steady_s: Annotated[float, typer.Option(help="seconds of steady calls around each swap")] = 5.0,
         rounds: Annotated[int, typer.Option(help="first-predict vs download rounds")] = 5,
         strategies: Annotated[list[str] | None, typer.Option("--strategy", help="auto (sequential down) and/or overlap")] = None,
         server_nice: Annotated[int, typer.Option(help="niceness of the server process (0: same priority as the device)")] = 10,
         store: Annotated[Path | None, typer.Option(help="an existing store holding the model (default: a fresh copy of the "
                                                    "default store, whose builds take minutes)")] = None,
         out_dir: Annotated[Path, typer.Option(help="where result JSON goes")] = RESULTS,
         quick: Annotated[bool, typer.Option("--quick", help="smoke run: 1 s steady phases, 1 round, overlap only; into results/quick/, marked smoke")] = False) -> None:
    started = time.perf_counter()
    load_start = os.getloadavg()
    if quick:
        steady_s, rounds, strategies = 1.0, 1, strategies or ["overlap"]
    out_dir = quick_out_dir(out_dir, quick)
    strategies = strategies or ["auto", "overlap"]
    with bench_store(store) as root, serving(root, model, server_nice, cut_down=store is None) as url:
        models = httpx.get(f"{url}/v1/models").json()["models"]
        palette = next(m for m in models if m["name"] == model)["palette"]
        some_profile = next(iter(palette[0]["estimates"]))
        small_mb = min(p["estimates"][some_profile]["memory_mb"] for p in palette) + 0.05
        t = time.perf_counter()
        big, small = resolve(url, model, None), resolve(url, model, small_mb)  # warm the server: builds are not measured
        build_s = time.perf_counter() - t
        console.print(f"big {big['config']} {big['estimates']}; small {small['config']} {small['estimates']}; builds {build_s:.0f} s")
        first = first_predict_vs_download(url, model, big, rounds)
        runs = [swap_run(url, model, big, small_mb, steady_s, s) for s in strategies]
    table = Table("strategy", "move", "how", "decision->swap s", "during p50/p99 ms", "steady p99 (slower) ms",
                  "ratio", "RSS before/peak MB", "failed", title="predict during hot swaps (one caller thread, 1 onnx thread)")
    for run in runs:
        for move, ratio in zip(run["swaps"], run["swap_p99_over_steady_p99"]):
            d = move["during"]
            table.add_row(run["strategy_setting"], move["direction"], move["strategy"], f"{move['decision_to_swap_s']:.2f}",
                          f"{d.get('p50_ms', '-')}/{d.get('p99_ms', '-')} ({d['calls']} calls)",
                          f"{run['steady_p99_slower_model_ms']}", f"{ratio}x",
                          f"{move['rss_before_mb']}/{move['rss_peak_during_mb']}", str(run["failed"]))
    console.print(table)
    console.print(f"first predict of a fresh device {statistics.median(first['first_predict_s']):.2f} s vs download alone "
                  f"{statistics.median(first['download_only_s']):.2f} s: {first['median_ratio']}x (target <= 2x)")
    notes = ["server, client and the caller thread share this machine's cores; other jobs may have run at the same time",
             f"the server ran at nice {server_nice} (a device's server is another machine; 0 = same priority as the device)",
             "download alone: GETs of the manifest and every file on an httpx client made before the clock starts",
             "steady phases exclude the decision->swap windows; 'during' is every call that started inside one"]
    results = {"big": {"config": big["config"], "estimates": big["estimates"]},
               "small": {"config": small["config"], "estimates": small["estimates"]},
               "server_build_s": round(build_s, 1), "first_predict": first, "runs": runs}
    import onnxruntime

    env = {**machine(), "onnxruntime": onnxruntime.__version__,
           "load_average_1_5_15": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]}}
    console.print(f"load average (1, 5, 15 min) at start {env['load_average_1_5_15']['start']}, at end {env['load_average_1_5_15']['end']}")
    write_result(out_dir, "client-swap", base_record("client-swap", __doc__.split("\n\n")[0],
                                                     {"model": model, "steady_s": steady_s, "rounds": rounds,
                                                      "strategies": strategies, "server_nice": server_nice, "quick": quick,
                                                      "store": "existing" if store is not None else "fresh default"}, results, started, env, quick, notes))


if __name__ == "__main__":
    app()
