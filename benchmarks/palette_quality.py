"""Palette quality (issue 13, point 1): the MLFS palette against the baselines a user would otherwise pick, in
one table and one figure: accuracy against non-embedding parameters and against measured latency per device
profile, training cost (wall time, trainable parameters, steps, hardware) beside each.

Measures nothing itself: it gathers what the other benchmarks measured, each point with the file it came from.

- MLFS palette: the palette's ``palette.json`` (every config) and its ``../report.json`` (training cost).
- Teacher fully fine-tuned, shapes cut from the pretrained model and fine-tuned alone, the same shapes from
  random initialisation, a distilled student of the minnet's shape: ``mlfs_reference.py full-ft`` results
  (``full-ft.json``, ``full-ft_<shape>.json``, ``full-ft-random_<shape>.json``, ``full-ft-kd_<shape>.json``) and
  ``palette_ablation.py``'s baselines (``palette-ablation.json``).
- Stage-0 teacher and naive slices of it (no training): ``mlfs_reference.py no-stages-1-2`` (preferring
  ``no-stages-1-2_shapes.json``, run on the shipped palette with the latency configs).
- Latency: ``latency_bench.py``'s same-round timings per profile (``latency.json``); a shape's latency does not
  depend on its weights, so every method's point of a timed shape gets it.

Writes ``results/palette-quality.json`` and ``palette-quality.png``. ``plot_all.py`` re-gathers before drawing.
Run: ``.venv/bin/python benchmarks/palette_quality.py`` (seconds). ``--quick``: the same into results/quick/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from bench_record import REPO, RESULTS, base_record, console, machine, quick_out_dir, write_result
from plots import Results, hardware
from rich.table import Table

PALETTE = REPO / "palettes" / "minilm-movie-reviews" / "adapters"
MLFS, TEACHER_FT, STAGE0, NAIVE = ("MLFS palette", "teacher fully fine-tuned", "stage-0 teacher",
                                   "naive slice of the stage-0 teacher (no training)")
SHAPE_FT, RANDOM, KD = ("shape cut from pretrained, fine-tuned alone", "shape from random init, trained alone",
                        "distilled student (minnet shape)")


def short_hw(record: dict[str, Any]) -> str:
    env = record.get("environment") or {}
    if env.get("cuda_device") or "gpu" in str(env.get("platform", "")):
        return "GPU (H200)" if "H200" in json.dumps(record.get("notes", "")) + str(env.get("cuda_device")) else "GPU"
    return f"CPU {env.get('cpu_count')} cores"


def source(stem: str, record: dict[str, Any]) -> dict[str, Any]:
    return {"stem": stem, "environment": record.get("environment"), "finished_at": record.get("finished_at"),
            "smoke": record.get("smoke", False), "hardware": hardware(record), "command": record.get("command")}


def point(method: str, shape: str, non_embedding: int, accuracy: float, stem: str, **extra: Any) -> dict[str, Any]:
    return {"method": method, "shape": shape, "params_non_embedding": non_embedding, "accuracy": accuracy,
            "source": stem, "latency_ms": {}, **extra}


def full_ft_method(stem: str, record: dict[str, Any]) -> str:
    if stem.startswith("full-ft-kd"):
        return KD
    if stem.startswith("full-ft-random"):
        return RANDOM
    return SHAPE_FT if record["settings"].get("sliced") else TEACHER_FT


def gather(results_dir: Path, palette_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Points, training costs, latency profiles and ratios from the JSONs (nothing is measured)."""
    res = Results(results_dir)
    points: list[dict[str, Any]] = []
    costs: list[dict[str, Any]] = []
    sources: list[dict[str, Any]] = []
    notes: list[str] = []

    palette = json.loads((palette_dir / "palette.json").read_text())
    report_path = palette_dir.parent / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    for c in palette["configs"]:
        points.append(point(MLFS, c["shape"], c["params_non_embedding"], c["accuracy"], "palette.json"))
    by_shape = {c["shape"]: c for c in palette["configs"]}
    teacher_shape = max(palette["configs"], key=lambda c: c["params_total"])["shape"]
    minnet_shape = min(palette["configs"], key=lambda c: c["params_total"])["shape"]
    if report:
        ablation = res.get("palette-ablation")
        trainable = next((v["trainable_params"] for v in (ablation or {}).get("results", {}).get("variants", [])
                          if v["variant"] == "vec-t0-small-r32"), None)
        costs.append({"method": MLFS, "label": "MLFS palette (36 configs)", "wall_seconds": report["train_seconds"],
                      "trainable_params": trainable or 0, "steps": "3 x 566 steps, K=4",
                      "hardware": (report.get("trained_on") or {}).get("device", report.get("device")),
                      "hardware_short": "GPU (H200), shared" if report.get("device") == "cuda" else "CPU",
                      "source": "palettes/.../report.json"})

    for stem, rec in res.matching("full-ft*").items():
        if rec.get("smoke") or stem.startswith("full-ft-reorder-"):  # the reordering ablation's arm, drawn in ablations.png
            continue
        r, method = rec["results"], full_ft_method(stem, rec)
        shape = rec["settings"]["config_label"]
        non_emb = by_shape[shape]["params_non_embedding"] if shape in by_shape else r["params"]["non_embedding_without_head"]
        points.append(point(method, shape, non_emb, r["final_dev_accuracy"], stem, steps=r["steps"]))
        costs.append({"method": method, "label": f"{method.split(' (')[0]}: {shape.replace(' D384', '')}",
                      "wall_seconds": rec["wall_seconds"], "trainable_params": r["params"]["trainable_with_head"],
                      "steps": f"{r['steps']} steps", "hardware": hardware(rec), "hardware_short": short_hw(rec),
                      "source": stem})
        sources.append(source(stem, rec))

    ablation = res.get("palette-ablation")
    if ablation:
        for name, base in ablation["results"].get("baselines", {}).items():
            method = TEACHER_FT if name.startswith("teacher") else SHAPE_FT
            for seed, acc in base["accuracy_by_seed"].items():
                points.append(point(method, base["shape"], by_shape[base["shape"]]["params_non_embedding"], acc,
                                    f"palette-ablation ({name}, seed {seed})", steps=base["steps"]))
            costs.append({"method": method, "label": f"{method.split(' (')[0]}: {base['shape'].replace(' D384', '')}",
                          "wall_seconds": base["wall_seconds"], "trainable_params": 22566146 if method == TEACHER_FT else 14584514,
                          "steps": f"{base['steps']} steps", "hardware": "; ".join(base.get("hardware") or [hardware(ablation)]),
                          "hardware_short": "GPU (H200), shared", "source": f"palette-ablation ({name})"})
        sources.append(source("palette-ablation", ablation))

    stage0_stem = "no-stages-1-2_shapes" if res.get("no-stages-1-2_shapes") else "no-stages-1-2"
    stage0 = res.get(stage0_stem)
    if stage0 and not stage0.get("smoke"):
        if stage0_stem == "no-stages-1-2":
            notes.append("stage-0 points come from no-stages-1-2.json, which may predate the shipped palette")
        for row in stage0["results"]["rows"]:
            method = STAGE0 if row["shape"] == teacher_shape else NAIVE
            points.append(point(method, row["shape"], row["params_non_embedding"], row["accuracy_stage0_only"], stage0_stem,
                                steps=0))
        sources.append(source(stage0_stem, stage0))

    latency = res.get("latency")
    profiles: list[str] = []
    if latency:
        lr = latency["results"]
        shapes = lr["train"] + lr["held_out"]
        timed = {}
        for name, p in (lr.get("same_rounds") or {}).items():
            timed[name] = dict(zip(shapes, p.get("bench_ms", []) + p["measured_ms"]))
            profiles.append(name)
        for pt in points:
            pt["latency_ms"] = {name: timed[name].get(pt["shape"]) for name in profiles}
        sources.append(source("latency", latency))

    return {"points": points, "training_cost": sorted(costs, key=lambda c: (c["method"] != MLFS, c["label"])),
            "latency_profiles": profiles, "seq_len": latency["settings"]["seq_len"] if latency else None,
            "data": palette.get("data", {}).get("name"), "teacher_shape": teacher_shape, "minnet_shape": minnet_shape,
            "ratios": ratios(points, teacher_shape, minnet_shape, by_shape, profiles), "sources": sources}, notes


def ratios(points, teacher_shape, minnet_shape, by_shape, profiles) -> list[dict[str, Any]]:
    """Per shape of interest (the minnet, every palette shape a baseline was trained at, the teacher's): size and
    latency against the teacher's shape; MLFS accuracy minus each method's (mean over its runs there, in points)."""
    def mean_acc(method, shape):
        accs = [p["accuracy"] for p in points if p["method"] == method and p["shape"] == shape]
        return sum(accs) / len(accs) if accs else None

    teacher = by_shape[teacher_shape]
    lat = {name: next((p["latency_ms"].get(name) for p in points if p["shape"] == teacher_shape and p["latency_ms"].get(name)), None)
           for name in profiles}
    teacher_ft = mean_acc(TEACHER_FT, teacher_shape)
    rows = []
    trained = {p["shape"] for p in points if p["method"] in (SHAPE_FT, RANDOM, KD) and p["shape"] in by_shape}
    shapes = sorted({minnet_shape, teacher_shape} | trained, key=lambda sh: by_shape[sh]["params_total"])
    for shape in shapes:
        c = by_shape[shape]
        mlfs = mean_acc(MLFS, shape)
        row = {"shape": shape, "mlfs_accuracy": mlfs,
               "total_params_vs_teacher": c["params_total"] / teacher["params_total"],
               "non_embedding_params_vs_teacher": c["params_non_embedding"] / teacher["params_non_embedding"],
               "latency_vs_teacher": {}, "accuracy_points_vs": {}}
        for name in profiles:
            ms = next((p["latency_ms"].get(name) for p in points if p["shape"] == shape and p["latency_ms"].get(name)), None)
            row["latency_vs_teacher"][name] = ms / lat[name] if ms and lat[name] else None
        if teacher_ft is not None:
            row["accuracy_points_vs"][TEACHER_FT] = 100 * (mlfs - teacher_ft)
        for method in (STAGE0, NAIVE, SHAPE_FT, RANDOM, KD):
            acc = mean_acc(method, shape)
            if acc is not None:
                row["accuracy_points_vs"][method] = 100 * (mlfs - acc)
        rows.append(row)
    return rows


def write_palette_quality(results_dir: Path, palette_dir: Path, out_dir: Path | None = None, render_figures: bool = True,
                          started: float | None = None, smoke: bool = False) -> Path:
    started = time.perf_counter() if started is None else started
    gathered, notes = gather(results_dir, palette_dir)
    notes += ["Gathered from other benchmarks' JSONs (see results.sources and each point's source); nothing measured here.",
              "Latency: latency.json's same-round medians (onnxruntime, batch 1) per profile; only its timed shapes have one.",
              "Training cost: wall seconds of each run as recorded (start-up and evaluation included) on the hardware named."]
    settings = {"results": str(results_dir), "palette": str(palette_dir)}
    record = base_record("palette-quality", "MLFS palette vs baselines: accuracy, size, latency, training cost", settings,
                         gathered, started, machine(), smoke, notes)
    out = Path(out_dir or results_dir)
    if render_figures:
        return write_result(out, "palette-quality", record)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "palette-quality.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def main(results: Annotated[Path, typer.Option(help="Folder of the result JSONs to gather from.")] = RESULTS,
         palette: Annotated[Path, typer.Option(help="The palette's adapters/ folder (palette.json).")] = PALETTE,
         out_dir: Annotated[Path, typer.Option(help="Where palette-quality.json/.png go.")] = RESULTS,
         quick: Annotated[bool, typer.Option("--quick", help="Write into results/quick/ (a smoke run of the script).")] = False) -> None:
    started = time.perf_counter()
    path = write_palette_quality(results, palette, quick_out_dir(out_dir, quick), started=started, smoke=quick)
    data = json.loads(path.read_text())["results"]
    table = Table("shape", "MLFS acc", "size vs teacher (non-emb)", *[f"latency vs teacher, {p}" for p in data["latency_profiles"]],
                  "MLFS minus baseline, points", title="palette quality: measured ratios")
    for row in data["ratios"]:
        table.add_row(row["shape"], f"{100 * row['mlfs_accuracy']:.2f} %",
                      f"{row['total_params_vs_teacher']:.2f}x ({row['non_embedding_params_vs_teacher']:.2f}x)",
                      *[f"{v:.2f}x" if v else "-" for v in row["latency_vs_teacher"].values()],
                      "; ".join(f"{k}: {v:+.2f}" for k, v in row["accuracy_points_vs"].items()))
    console.print(table)


if __name__ == "__main__":
    typer.run(main)
