"""Why did the server's bench (``measure_profile``) and a device's timing (``client_sdk.latency``) disagree?

``latency_bench.py`` found the bench rows ~25 % slower than the same configs timed later in the same process,
and timings drifting within a process. This script times the same three artifacts again and again through the
bench's own sequence (fresh store, model load, calibration, builds, many sessions, spinning sessions), each time
twice side by side: in this process and in a clean subprocess that imports only ``client_sdk.latency`` (what a
device runs). Per timed pass it records, besides the wall time:

- ``cpu``: the CPU time of the timing process (all its threads) during the pass, i.e. the work itself;
- ``wait``: the time its threads sat runnable on a run queue while another task had the CPU
  (``/proc/<pid>/task/*/schedstat``), i.e. contention from other processes;
- ``others``: the share of the machine's CPUs that other processes used during the measurement (``/proc/stat``).

If the process state were the cause (spinning leftovers, a thread pool, affinity), the in-process figures would
differ from the subprocess's at the same moment, with the same ``others``; if contention is the cause, wall time
follows ``wait`` and ``others`` in both, and the per-pass CPU time stays put.

Run: ``flock /tmp/mlfs-bench.lock .venv/bin/python benchmarks/latency_diagnosis.py`` (about a minute; builds
three artifacts in a temporary store). Writes ``benchmarks/results/latency-diagnosis.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from bench_record import base_record, console, machine, quick_out_dir, write_result

from client_sdk.latency import measure_interleaved, thread_schedstat

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
MODEL = "minilm-sentiment"

# The child: client_sdk.latency without torch or the server, as on a device; the same timed loop as here.
CHILD = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/benchmarks"]
from latency_diagnosis import timed_passes  # client_sdk.latency, no torch
print(json.dumps(timed_passes(sys.argv[4:], int(sys.argv[2]), int(sys.argv[3]))))
"""


def busy_ticks() -> tuple[int, int]:
    """(machine busy ticks over all CPUs, this process's busy ticks)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    machine_busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return machine_busy, int(own[11]) + int(own[12])


def run_queue_wait_ns() -> int:
    """Summed run-queue wait of all this process's threads (ns)."""
    return sum(wait for _, wait in thread_schedstat().values())


def timed_passes(paths: list[str], threads: int, runs: int, warmup: int = 3) -> dict:
    """``measure_interleaved``'s loop (sessions from client_sdk.latency, warm-up discarded), per pass: wall,
    process CPU and run-queue wait (ms); plus the other processes' CPU share over the whole measurement."""
    from client_sdk.latency import open_session, synthetic_inputs

    sessions = [open_session(p, threads) for p in paths]
    feeds = [synthetic_inputs(s, 64, 1) for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(warmup):
            s.run(None, f)
    out: dict = {"wall": [[] for _ in paths], "cpu": [[] for _ in paths], "wait": [[] for _ in paths]}
    m0, own0, t0 = *busy_ticks(), time.perf_counter()
    for i, (s, f) in enumerate(zip(sessions, feeds)):
        for _ in range(runs):
            w0, c0, s0 = run_queue_wait_ns(), time.process_time(), time.perf_counter()
            s.run(None, f)
            s1, c1, w1 = time.perf_counter(), time.process_time(), run_queue_wait_ns()
            out["wall"][i].append((s1 - s0) * 1e3)
            out["cpu"][i].append((c1 - c0) * 1e3)
            out["wait"][i].append((w1 - w0) / 1e6)
    m1, own1, t1 = *busy_ticks(), time.perf_counter()
    tick = os.sysconf("SC_CLK_TCK")
    out["others"] = max(0.0, ((m1 - m0) - (own1 - own0)) / tick / ((t1 - t0) * (os.cpu_count() or 1)))
    return out


def summary(raw: dict) -> dict:
    med = {k: [round(statistics.median(v), 3) for v in raw[k]] for k in ("wall", "cpu", "wait")}
    return {**med, "others": round(raw["others"], 3)}


def child(paths: list[Path], threads: int, runs: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(threads), str(runs), *map(str, paths)],
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(
    repeats: Annotated[int, typer.Option(help="Side-by-side pairs per stage.")] = 3,
    runs: Annotated[int, typer.Option(help="Timed passes per artifact per measurement.")] = 10,
    threads: Annotated[int, typer.Option(help="Intra-op threads (the 2-thread profile).")] = 2,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON goes.")] = RESULTS,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke run: one pair per stage, 2 passes; into results/quick/ (marked smoke).")] = False,
) -> None:
    from server.latency_table import spread_by_size
    from server.metrics import Metrics
    from server.service import DeliveryService
    from server.settings import Settings
    from server.store import prepare_default_store

    started = time.perf_counter()
    if quick:
        repeats, runs = 1, 2
    out_dir = quick_out_dir(out_dir, quick)
    stages: list[dict] = []

    def stage(name: str, paths: list[Path]) -> None:
        pairs = []
        for r in range(repeats):  # alternate which side goes first
            first_here = r % 2 == 0
            a = timed_passes([str(p) for p in paths], threads, runs) if first_here else None
            b = child(paths, threads, runs)
            a = a or timed_passes([str(p) for p in paths], threads, runs)
            pairs.append({"in_process": summary(a), "subprocess": summary(b)})
        ratio = statistics.median(x / y for p in pairs for x, y in zip(p["in_process"]["wall"], p["subprocess"]["wall"]))
        stages.append({"stage": name, "load": os.getloadavg()[0], "in_over_sub_wall": round(ratio, 3), "pairs": pairs})
        console.print(f"{name}: in-process / subprocess wall {ratio:.3f}")
        for p in pairs:
            console.print(f"   in  {p['in_process']}\n   sub {p['subprocess']}")

    with tempfile.TemporaryDirectory(prefix="mlfs-latdiag-") as tmp:
        store = Path(tmp) / "store"
        prepare_default_store(store)
        svc = DeliveryService(Settings(store=store, latency_calibration=False), Metrics())
        svc.load([MODEL])
        loaded = svc.model(MODEL)
        svc.calibrate(force=True)
        configs = spread_by_size(loaded, 3)
        paths = [svc.build(loaded, c, "fp32").file("model.onnx") for c in configs]  # the bench's state at step 2
        stage("after calibration and builds (the bench's step 2)", paths)
        for _ in range(10):  # the bench opens and drops many sessions between step 2 and step 7
            measure_interleaved(paths, threads, 64, 1, rounds=1, runs=3)
        stage("after 30 more sessions", paths)
        for _ in range(4):  # step 7: sessions with spinning on
            measure_interleaved(paths[1:2], threads, 64, 1, rounds=1, runs=10, allow_spinning=True)
        stage("after spinning sessions (step 7)", paths)
        svc.close()

    # Across everything measured: does wall time follow contention? (per measurement, per artifact)
    xs = [(s["wall"][i], s["cpu"][i], s["wait"][i], s["others"]) for st in stages for p in st["pairs"]
          for s in p.values() for i in range(len(s["wall"]))]
    results = {"configs": [c.describe() for c in configs], "stages": stages,
               "measurements": [{"wall": w, "cpu": c, "wait": q, "others": o} for w, c, q, o in xs]}
    write_result(out_dir, "latency-diagnosis", base_record(
        "latency-diagnosis", "in-process vs clean-subprocess timing through the latency bench's sequence",
        {"repeats": repeats, "runs": runs, "threads": threads, "seq_len": 64}, results, started, machine(), quick, []))


if __name__ == "__main__":
    typer.run(main)
