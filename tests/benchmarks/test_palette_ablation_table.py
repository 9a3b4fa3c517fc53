"""palette_ablation.py table: the reordering on/off comparison and the palette's middle, from run files alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ("L3[1,3,5] H6 F768 D384", "L4[1,2,4,5] H12 F1152 D384", "L5[0,1,2,4,5] H12 F1536 D384", "L6[0,1,2,3,4,5] H12 F1536 D384")


def run_file(folder: Path, variant: str, seed: int, accuracies: list[float], device: str) -> None:
    palette = {f"k{i}": {"shape": s, "accuracy": a, "params_non_embedding": 1000 * (i + 1)}
               for i, (s, a) in enumerate(zip(SHAPES, accuracies))}
    results = {"variant": variant, "describes": variant, "seed": seed,
               "minnet": {"shape": SHAPES[0], "accuracy": accuracies[0]}, "maxnet": {"shape": SHAPES[-1], "accuracy": accuracies[-1]},
               "palette": palette, "trainable_params": 10, "trainable_params_by_kind": {}, "stack_bytes": 100,
               "parts_bytes_fp32": 40, "base_bytes_fp32": 400, "train_seconds": 60.0, "steps_by_stage": {"0": 2}}
    environment = {"cpu_count": 2, "device": device, **({"cuda_device": "NVIDIA H200"} if device == "cuda" else {})}
    (folder / f"{variant}_seed{seed}.json").write_text(json.dumps({"smoke": False, "results": results, "environment": environment}))


def test_reordering_on_off_and_the_mid_come_from_the_paired_variants(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("palette_ablation", None)
    import palette_ablation

    runs = tmp_path / "palette-ablation"
    runs.mkdir()
    on, off = palette_ablation.REORDERING_PAIR
    run_file(runs, on, 0, [0.80, 0.84, 0.85, 0.86], "cuda")
    run_file(runs, on, 1, [0.82, 0.82, 0.85, 0.86], "cuda")
    run_file(runs, off, 0, [0.78, 0.83, 0.86, 0.85], "cpu")
    run_file(runs, off, 1, [0.80, 0.83, 0.84, 0.85], "cpu")
    res = palette_ablation.table(out_dir=runs, shed=None, write=tmp_path / "palette-ablation.json")
    by_name = {v["variant"]: v for v in res["variants"]}
    assert by_name[on]["mid_shape"] == palette_ablation.MID_SHAPE and by_name[on]["mid_by_seed"] == [0.84, 0.82]
    assert by_name[on]["hardware"] == ["NVIDIA H200 (CUDA)"] and by_name[off]["hardware"] == ["CPU, 2 cores"]
    effect = res["reordering"]
    assert abs(effect["minnet"]["off_minus_on"] - (-0.02)) < 1e-9 and abs(effect["mid"]["off_minus_on"] - 0.0) < 1e-9
    assert abs(effect["maxnet"]["off_minus_on"] - (-0.01)) < 1e-9
    # per config, mean of seeds: minnet -0.02, mid 0, L5 0, maxnet -0.01: none better without reordering
    assert (effect["configs"], effect["configs_better_off"], effect["configs_better_on"]) == (4, 0, 2)
    record = json.loads((tmp_path / "palette-ablation.json").read_text())
    assert record["environment"]["runs_on"] == ["CPU, 2 cores", "NVIDIA H200 (CUDA)"]
    assert (tmp_path / "palette-ablation.png").is_file() and (tmp_path / "ablations.png").is_file()


def test_no_reordering_comparison_without_both_arms(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("palette_ablation", None)
    import palette_ablation

    runs = tmp_path / "palette-ablation"
    runs.mkdir()
    run_file(runs, palette_ablation.REORDERING_PAIR[0], 0, [0.80, 0.84, 0.85, 0.86], "cpu")
    assert palette_ablation.table(out_dir=runs, shed=None, write=tmp_path / "palette-ablation.json")["reordering"] is None
