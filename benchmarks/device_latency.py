"""Latency per device profile (issue 13, point 4): for each built-in profile's thread count, the teacher (maxnet)
and palette configs, fp32 vs int8 artifacts vs PyTorch eager, p50/p95 at the sequence lengths devices use, and
the resident memory each artifact costs once loaded.

One store (its own, cached between runs: ``<data home>/device-latency-store``) serving the shipped MiniLM palette;
every artifact is built through the delivery service (the direct builder, fp32 and the int8 gate). Timing: per
(threads, sequence length) every artifact and PyTorch eager run in interleaved rounds, so load on a shared machine
hits all alike; p50 and p95 over all timed passes. Memory: each artifact loaded alone in a fresh process
(``onnxruntime`` session + one forward pass), resident set after minus before loading.

Run: ``.venv/bin/python benchmarks/device_latency.py`` (about 4 minutes after the artifacts are cached; the
first run builds 6, ~2 min). Writes ``results/device-latency.json`` and ``device-latency.png``.
``--quick``: the minnet only, seq 16, few runs, into results/quick/.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from bench_record import RESULTS, base_record, console, machine, quick_out_dir, write_result
from rich.table import Table

from client_sdk.latency import load_average, open_session, synthetic_inputs
from server.metrics import Metrics
from server.profiles import BUILTIN
from server.service import DeliveryService
from server.settings import Settings
from server.store import prepare_default_store
from slicer import data_home

MODEL = "minilm-sentiment"
CONFIGS = {  # the minnet, a middle config and the maxnet (the teacher's shape)
    "min": {"layers": 3, "heads": 6, "ffn": 768},
    "mid": {"layers": 4, "heads": 12, "ffn": 1152},
    "max": {"layers": 6, "heads": 12, "ffn": 1536},
}
RSS_PROBE = """
import json, sys
import numpy as np, psutil
proc = psutil.Process()
import onnxruntime
from client_sdk.latency import open_session, synthetic_inputs
before = proc.memory_info().rss
s = open_session(sys.argv[1], 1)
s.run(None, synthetic_inputs(s, 64, 1))
print(json.dumps({"rss_before_mb": before / 2**20, "rss_after_mb": proc.memory_info().rss / 2**20}))
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_interleaved(runners: dict[str, callable], rounds: int, runs: int) -> dict[str, dict[str, float]]:
    for run in runners.values():  # warm-up, untimed
        run()
        run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(max(1, runs // rounds)):
                t0 = time.perf_counter()
                runners[name]()
                times[name].append(1000 * (time.perf_counter() - t0))
    return {k: {"p50_ms": round(statistics.median(v), 3), "p95_ms": round(percentile(v, 0.95), 3), "n": len(v)}
            for k, v in times.items()}


def resident_mb(path: Path) -> dict[str, float]:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path)], capture_output=True, text=True, check=True, cwd=root,
                         env={"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {**{k: round(v, 1) for k, v in got.items()}, "resident_mb": round(got["rss_after_mb"] - got["rss_before_mb"], 1)}


def main(store: Annotated[Path, typer.Option(help="Store (artifacts cached there between runs).")] = data_home() / "device-latency-store",
         seq_lens: Annotated[str, typer.Option(help="Comma-separated sequence lengths.")] = "16,64,128",
         rounds: Annotated[int, typer.Option(help="Interleaved rounds per (threads, seq).")] = 3,
         runs: Annotated[int, typer.Option(help="Timed passes per artifact per (threads, seq), over the rounds.")] = 30,
         eager_runs: Annotated[int, typer.Option(help="Timed PyTorch eager passes (slow: fewer).")] = 9,
         out_dir: Annotated[Path, typer.Option(help="Where the JSON (and PNG) go.")] = RESULTS,
         quick: Annotated[bool, typer.Option("--quick", help="Smoke run: the minnet, seq 16, few runs; into results/quick/, marked smoke.")] = False) -> None:
    import torch

    from slicer import ExportError, SubnetConfig

    started = time.perf_counter()
    configs = {"min": CONFIGS["min"]} if quick else CONFIGS
    if quick:
        seq_lens, rounds, runs, eager_runs = "16", 1, 3, 2
    out_dir = quick_out_dir(out_dir, quick)
    seqs = [int(s) for s in seq_lens.split(",") if s]
    prepare_default_store(store)
    svc = DeliveryService(Settings(store=store, latency_calibration=False), Metrics())
    with console.status(f"loading {MODEL}"):
        svc.load([MODEL])
    loaded = svc.model(MODEL)
    artifacts, subnets, shapes, int8_gate = {}, {}, {}, {}
    with console.status("building or finding artifacts"):
        for label, spec in configs.items():
            cfg = SubnetConfig.parse(spec, loaded.dims)
            shapes[label] = cfg.describe()
            subnets[label] = loaded.opened.supernet.extract(cfg).eval()
            artifacts[f"{label} fp32"] = svc.build(loaded, cfg, "fp32")
            try:
                artifacts[f"{label} int8"] = svc.build(loaded, cfg, "int8")
                int8_gate[label] = json.loads((artifacts[f"{label} int8"].path / "manifest.json").read_text()).get("int8_quality")
            except ExportError as err:  # the gate refused: a result too
                int8_gate[label] = {"accepted": False, "rejected": str(err)[:400]}
    sizes = {k: e.record.size for k, e in artifacts.items()}
    threads_by_profile = {p.name: p.threads for p in BUILTIN}
    rows = []
    for threads in sorted(set(threads_by_profile.values())):
        torch.set_num_threads(threads)
        sessions = {k: open_session(e.file("model.onnx"), threads) for k, e in artifacts.items()}
        for seq in seqs:
            runners = {}
            for k, s in sessions.items():
                feed = synthetic_inputs(s, seq, 1)
                runners[k] = lambda s=s, feed=feed: s.run(None, feed)
            timings = time_interleaved(runners, rounds, runs)
            eager_feed = {k: torch.from_numpy(v) for k, v in synthetic_inputs(next(iter(sessions.values())), seq, 1).items()}

            def run_eager(net, feed=eager_feed):
                with torch.no_grad():
                    net(**feed)

            timings.update({f"{label} eager": t for label, t in time_interleaved(
                {label: (lambda net=net: run_eager(net)) for label, net in subnets.items()}, rounds, eager_runs).items()})
            load = load_average()
            for k, t in timings.items():
                label, kind = k.split(" ", 1)
                rows.append({"threads": threads, "profiles": sorted(n for n, th in threads_by_profile.items() if th == threads),
                             "seq_len": seq, "config": label, "shape": shapes[label], "runtime": kind, **t, "load": load})
            console.print(f"{threads} thread(s), seq {seq}: " + ", ".join(f"{k} {t['p50_ms']:.1f}" for k, t in timings.items()))
        del sessions
    with console.status("resident memory per artifact"):
        memory = {k: {**resident_mb(e.file("model.onnx")), "size_mb": round(sizes[k] / 2**20, 1)} for k, e in artifacts.items()}
    svc.close()

    def p50(threads, seq, config, runtime):
        return next((r["p50_ms"] for r in rows if (r["threads"], r["seq_len"], r["config"], r["runtime"]) == (threads, seq, config, runtime)), None)

    ratios = []
    for threads in sorted(set(threads_by_profile.values())):
        for seq in seqs:
            teacher = p50(threads, seq, "max", "fp32")
            for label in configs:
                fp32, int8, eager = p50(threads, seq, label, "fp32"), p50(threads, seq, label, "int8"), p50(threads, seq, label, "eager")
                ratios.append({"threads": threads, "seq_len": seq, "config": label,
                               "fp32_vs_teacher_fp32": fp32 / teacher if teacher and fp32 else None,
                               "int8_vs_fp32": int8 / fp32 if int8 and fp32 else None,
                               "fp32_vs_eager": fp32 / eager if eager and fp32 else None})
    table = Table("threads", "seq", "config", "fp32 p50/p95", "int8 p50/p95", "eager p50/p95", "fp32 / teacher",
                  title=f"latency per device profile, {MODEL}, batch 1 (ms)")
    for threads in sorted(set(threads_by_profile.values())):
        for seq in seqs:
            for label in configs:
                cells = []
                for kind in ("fp32", "int8", "eager"):
                    r = next((r for r in rows if (r["threads"], r["seq_len"], r["config"], r["runtime"]) == (threads, seq, label, kind)), None)
                    cells.append(f"{r['p50_ms']:.1f}/{r['p95_ms']:.1f}" if r else "-")
                ratio = next(x["fp32_vs_teacher_fp32"] for x in ratios if (x["threads"], x["seq_len"], x["config"]) == (threads, seq, label))
                table.add_row(str(threads), str(seq), label, *cells, f"{ratio:.2f}x" if ratio else "-")
    console.print(table)
    for k, m in memory.items():
        console.print(f"{k}: file {m['size_mb']} MB, resident +{m['resident_mb']} MB")
    import onnxruntime

    settings = {"model": MODEL, "configs": {k: shapes[k] for k in configs}, "seq_lens": seqs, "rounds": rounds, "runs": runs,
                "eager_runs": eager_runs, "threads_by_profile": threads_by_profile, "quick": quick, "store": str(store)}
    results = {"rows": rows, "ratios": ratios, "memory": memory, "int8_gate": int8_gate, "sizes_bytes": sizes}
    notes = ["Profiles with the same thread count share one measurement (large-all-4g has os.cpu_count() threads).",
             "eager = the same subnet in PyTorch (fp32, torch threads = the profile's), no_grad, batch 1.",
             "resident_mb = RSS after loading the session and one forward pass at seq 64 minus RSS before, in a fresh process.",
             f"load average at the end: {load_average()}"]
    loads = [row["load"] for row in rows if row["load"] is not None]  # the 1-minute load average as each row was timed: the figure's footer shows the range
    env = {**machine(), "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
           "load_average": [round(min(loads), 2), round(max(loads), 2)] if loads else None}
    write_result(out_dir, "device-latency", base_record("device-latency", "latency per device profile: fp32/int8/eager, "
                                                        "p50/p95 per sequence length; resident memory per artifact",
                                                        settings, results, started, env, quick, notes))


if __name__ == "__main__":
    typer.run(main)
